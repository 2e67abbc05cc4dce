"""Shared fixtures and helpers: the real config, the committed reference model, the data
dir, the records of a results dir, the calibration windows of the reference corpus and
run.py's refusal of bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lwq.config import RunConfig, compose_run
from lwq.data import calibration_ids, load_texts
from lwq.results.store import RecordStore

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
REF_MODEL = Path(os.environ.get("LWQ_TEST_REF_MODEL", ROOT / "models" / "ref-tiny"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def compose_config(*overrides: str) -> RunConfig:
    """The checked RunConfig of `python run.py <overrides>`, composed exactly as run.py does."""
    return compose_run(*overrides)


def refused_by_run_py(capsys, *argv: str) -> str:
    """The one stderr line with which `python run.py <argv>` stops on bad input before Hydra
    starts (exit code 2): run.py's own check, run in process (no Python start-up)."""
    from run import check_before_hydra, command_words_to_overrides

    with pytest.raises(SystemExit) as stopped:
        check_before_hydra(command_words_to_overrides(list(argv)))
    assert stopped.value.code == 2
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def small_run_overrides(tmp_path: Path) -> list[str]:
    """A CPU-sized sweep: few points, small eval, no tracking, results in tmp."""
    return [
        f"model.path={REF_MODEL}",
        f"paths.results={tmp_path / 'results'}",
        "tracking=none",
        "sweep.fractions=[0,0.5,1]",
        "eval.limit=3",
        "eval.chunk_chars=1500",
        "calib.samples=4",
        "calib.seq_len=64",
    ]


def records(tmp_path: Path, model: str = "ref-tiny", name: str = "records.jsonl") -> list[dict]:
    """Every record a run with `small_run_overrides(tmp_path)` wrote for `model`."""
    return RecordStore(tmp_path / "results" / model / name).read()


def reference_calibration(tokenizer, samples: int = 8, seq_len: int = 128, seed: int = 0):
    """(samples, seq_len) windows of the reference corpus' calibration split."""
    texts = load_texts("ref-calib", ROOT)
    return calibration_ids(texts, tokenizer, samples=samples, seq_len=seq_len, seed=seed)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data (or LWQ_DATA); missing data fails loudly under CI, skips elsewhere."""
    path = Path(os.environ.get("LWQ_DATA", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        missing(f"benchmark data not found at {path}; set LWQ_DATA to the shared data dir")
    return path


def missing(message: str) -> None:
    """What a test does without a file it needs: fail loudly under CI, skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def ref_model():
    """The committed reference model and its tokenizer, loaded once. Tests that change it
    must restore it in a `finally` (or work on a copy)."""
    from lwq.modeling.load import load_model

    if not (REF_MODEL / "model.safetensors").exists():
        pytest.fail(f"{REF_MODEL} has no weights; run `make reference-model`")
    return load_model(str(REF_MODEL), dtype=torch.float32, device=torch.device("cpu"))
