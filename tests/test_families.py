"""The whole pipeline (load, find blocks, score, plan, quantize, evaluate, record) on a
shrunk random copy of every supported family and of every paper model's config."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from lwq.commands.sweep import run_sweep
from tests.conftest import CONF, REF_MODEL, compose_config, records
from tests.shrunk import FAMILIES, shrunk_from_conf, shrunk_model

pytestmark = pytest.mark.slow  # a whole sweep per family and paper config

PAPER_CONFS = sorted(p for p in (CONF / "model").glob("*.yaml") if p.stem != "ref-tiny")
CASES = [("family", f) for f in FAMILIES] + [("conf", p.stem) for p in PAPER_CONFS]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(REF_MODEL)


def _build(kind: str, name: str, vocab_size: int):
    if kind == "family":
        return shrunk_model(name, vocab_size=vocab_size)
    return shrunk_from_conf(CONF / "model" / f"{name}.yaml", vocab_size=vocab_size)


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}={n}" for k, n in CASES])
def test_sweep_runs_on_a_shrunk_copy(tmp_path, tokenizer, kind, name):
    model_dir = tmp_path / "model"
    _build(kind, name, len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    base = "ref-tiny" if kind == "family" else name
    cfg = compose_config(
        f"model={base}",
        f"model.path={model_dir}",
        f"model.name=shrunk-{name}",
        "model.trust_remote_code=false",  # the shrunk copy is a stock transformers class
        "model.max_length=128",
        "calib.text=ref-calib",
        "calib.samples=2",
        "calib.seq_len=32",
        "eval.text=ref-heldout",
        "eval.limit=1",
        "eval.chunk_chars=600",
        "sweep.fractions=[0,1]",
        "sweep.reference=false",
        "sweep.low=3",
        "quant.settings.group_size=32",
        "tracking=none",
        f"paths.results={tmp_path / 'results'}",
    )
    written = run_sweep(cfg)
    written_here = records(tmp_path, f"shrunk-{name}")
    assert len(written) == len(written_here) == 2
    blocks = written_here[0]["n_blocks"]
    assert blocks == 4 and sorted(written_here[0]["ranking"]) == list(range(blocks))
    assert [r["plan"] for r in written_here] == [[4] * blocks, [3] * blocks]
    ppl = [r["eval"]["cross_check"]["token_perplexity"] for r in written_here]
    assert ppl[0] != ppl[1]  # the 3-bit model is a different model
    assert all(r["eval"]["cross_check"]["agrees"] for r in written_here)
