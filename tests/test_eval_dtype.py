"""`eval.dtype=bfloat16`: the evaluation's forwards under bf16 autocast give numbers near
float32's but not equal, and a suite's identity (so record keys and the KL reference's
cache) tells them apart; float32 keeps the keys records had before the setting."""

from __future__ import annotations

import dataclasses

import pytest

from lwq.evaluation.suite import EvalSpec, Suite

SPEC = EvalSpec(name="t", text="ref-heldout", chunk_chars=1500, limit=2, seed=0, max_length=128)


@pytest.mark.slow
def test_bf16_evaluation_is_close_to_float32_and_keyed_apart(ref_model, tmp_path):
    model, tokenizer = ref_model
    results = {}
    for dtype in ("float32", "bfloat16"):
        spec = dataclasses.replace(SPEC, dtype=dtype)
        suite = Suite(spec, data_dir=tmp_path, workdir=tmp_path, batch_size=4, kl_top_k=16)
        suite.prepare().prepare_reference(model, tokenizer, tmp_path / f"{dtype}.safetensors")
        results[dtype] = suite.evaluate(model, tokenizer)
        assert next(model.parameters()).dtype.is_floating_point  # weights left as loaded
    task = next(iter(results["float32"]["tasks"]))
    ours = results["bfloat16"]["tasks"][task]["byte_perplexity"]
    theirs = results["float32"]["tasks"][task]["byte_perplexity"]
    assert ours != theirs and ours == pytest.approx(theirs, rel=2e-2)
    assert results["bfloat16"]["kl"]["mean"] < 1e-9  # its own bf16 reference: itself


def test_the_dtype_enters_the_identity_only_when_not_float32():
    assert "dtype" not in SPEC.identity()  # keys written before the setting stay valid
    bf16 = dataclasses.replace(SPEC, dtype="bfloat16")
    assert bf16.identity()["dtype"] == "bfloat16" and bf16.digest() != SPEC.digest()
