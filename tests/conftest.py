"""Shared fixtures: the real Hydra config, the committed reference model, the data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
REF_MODEL = Path(os.environ.get("LWQ_TEST_REF_MODEL", ROOT / "models" / "ref-tiny"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def compose_config(*overrides: str):
    """The real config, composed exactly as run.py does (plus test overrides)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


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


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data (or LWQ_DATA); missing data fails loudly under CI, skips elsewhere."""
    path = Path(os.environ.get("LWQ_DATA", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        message = f"benchmark data not found at {path}; set LWQ_DATA to the shared data dir"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def ref_model():
    """The committed reference model and its tokenizer, loaded once."""
    from lwq.models import load_model

    if not (REF_MODEL / "model.safetensors").exists():
        pytest.fail(f"{REF_MODEL} has no weights; run `make reference-model`")
    return load_model(str(REF_MODEL), dtype=torch.float32, device=torch.device("cpu"))
