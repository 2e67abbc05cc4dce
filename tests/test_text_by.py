"""`eval.text_by=lwq`: on quantized points the held-out text is scored by lwq's own pass
(the one KL needs), not run a second time through lm-eval; the numbers are lm-eval's to
its float precision, and the unquantized reference still goes through lm-eval."""

from __future__ import annotations

import copy

import pytest

from lwq.evaluation.suite import EvalSpec, Suite
from lwq.modeling.blocks import block_linears, find_blocks
from lwq.quant import make_backend

SPEC = dict(name="t", text="ref-heldout", chunk_chars=1500, limit=3, seed=0, max_length=128)


def _suite(tmp_path, text_by: str) -> Suite:
    return Suite(
        EvalSpec(**SPEC),
        data_dir=tmp_path,
        workdir=tmp_path / text_by,
        batch_size=4,
        kl_top_k=64,
        text_by=text_by,
    ).prepare()


@pytest.mark.slow
def test_lwq_scores_the_text_of_quantized_points_as_lm_eval_does(ref_model, tmp_path, monkeypatch):
    model, tokenizer = ref_model
    quantized = copy.deepcopy(model)
    for block in find_blocks(quantized):
        for _, linear in block_linears(block):
            make_backend("rtn", group_size=64).quantize(linear, 3)
    results = {}
    for text_by in ("lm-eval", "lwq"):
        suite = _suite(tmp_path, text_by)
        suite.prepare_reference(model, tokenizer, tmp_path / f"{text_by}.safetensors")
        calls = []
        evaluate = suite.harness.evaluate

        def counting(*args, _evaluate=evaluate, _calls=calls, **kwargs):
            _calls.append(kwargs.get("skip", set()))
            return _evaluate(*args, **kwargs)

        monkeypatch.setattr(suite.harness, "evaluate", counting)
        reference = suite.evaluate(model, tokenizer, reference_point=True)
        point = suite.evaluate(quantized, tokenizer)
        assert reference["text_by"] == "lm-eval" and reference["cross_check"]["agrees"]
        assert point["text_by"] == text_by
        assert calls[0] == set() and calls[1] == ({suite.task_name} if text_by == "lwq" else set())
        results[text_by] = point
    task = suite.task_name
    ours, theirs = results["lwq"]["tasks"][task], results["lm-eval"]["tasks"][task]
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity"):
        assert ours[metric] == pytest.approx(theirs[metric], rel=1e-5), metric
    assert ours["token_perplexity"] > 1.01 * reference["tasks"][task]["token_perplexity"]
    assert results["lwq"]["kl"] == pytest.approx(results["lm-eval"]["kl"])
