"""Bounded log-probabilities (lwq.evaluation.logits): a few positions at a time give the
numbers of whole logits (perplexity, KL, top-1; lwq's pass and lm-eval's), on ref-tiny and
on a shrunk GQA Llama; a model whose forward changes its logits in a way lwq does not
reproduce is refused, and Gemma-2's soft-capping is reproduced."""

from __future__ import annotations

import pytest
import torch

from lwq.data import chunk_documents, load_texts, seeded_subset
from lwq.errors import LwqError
from lwq.evaluation.divergence import KLMeter, TopKCollector
from lwq.evaluation.lm_eval_internals import rows_within
from lwq.evaluation.logits import OutputHead, rows_per_chunk
from lwq.evaluation.perplexity import perplexity
from tests.conftest import ROOT
from tests.shrunk import shrunk_model

TINY_GB = 2e-5  # a handful of positions at a time: many chunks, some crossing windows


class ByteTokenizer:
    """Bytes as token ids (mod 255), BOS 255: enough text for a 256-token shrunk model."""

    bos_token_id = 255
    eos_token_id = 255

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [b % 255 for b in text.encode("utf-8")]}


def _texts(n: int = 4) -> list[str]:
    return seeded_subset(chunk_documents(load_texts("ref-heldout", ROOT), 1500), n, seed=0)


def _measures(model, tokenizer, memory: float | None) -> tuple[float, dict, torch.Tensor]:
    """(NLL, KL stats against the unbounded reference, the reference's top-k indices)."""
    collector = TopKCollector(16)
    options = {"max_length": 64, "batch_size": 3, "logits_memory": memory}
    nll = perplexity(model, tokenizer, _texts(), each=collector, **options).nll
    reference = collector.result()
    with torch.no_grad():  # a perturbed model, so the KL is not zero
        model.get_output_embeddings().weight.mul_(1.2)
    try:
        meter = KLMeter(reference)
        perplexity(model, tokenizer, _texts(), each=meter, **options)
    finally:
        with torch.no_grad():
            model.get_output_embeddings().weight.div_(1.2)
    return nll, meter.stats(), reference.indices


@pytest.mark.parametrize("which", ["ref-tiny", "shrunk-gqa-llama"])
def test_a_few_positions_at_a_time_give_the_numbers_of_whole_logits(which, ref_model):
    if which == "ref-tiny":
        model, tokenizer = ref_model
    else:
        model, tokenizer = shrunk_model("llama", num_key_value_heads=2), ByteTokenizer()
    head = OutputHead(model)
    assert rows_per_chunk(head.vocab, TINY_GB) < 64  # bounded: fewer rows than one window
    whole_nll, whole_kl, whole_top = _measures(model, tokenizer, None)
    nll, kl, top = _measures(model, tokenizer, TINY_GB)
    assert nll == pytest.approx(whole_nll, rel=1e-6)
    assert kl["mean"] > 1e-6
    # a KL is a sum of differences of float32 log-probabilities: their last-bit rounding
    # (the output layer's matmul over fewer rows) moves it more than the NLL
    for name in ("mean", "p99", "top1_agreement"):
        assert kl[name] == pytest.approx(whole_kl[name], rel=1e-4), name
    assert kl["tokens"] == whole_kl["tokens"]
    assert torch.equal(top, whole_top)


def test_rows_follow_the_memory_setting():
    assert rows_per_chunk(49152, 0.25) == 423  # 0.25e9 // (3 floats x 4 B x 49152)
    assert rows_per_chunk(262144, 1e-9) == 1  # never zero
    assert rows_within(0.25, 512, 49152, 8) == 1  # lm-eval: 2 x 4 B x 512 x 49152 per row
    assert rows_within(1.0, 512, 49152, 8) == 4
    assert rows_within(100.0, 512, 49152, 8) == 8  # never more than the configured batch


def test_a_model_whose_forward_changes_its_logits_unseen_is_refused():
    model = shrunk_model("llama")
    original = model.forward

    def doubled(*args, **kwargs):
        out = original(*args, **kwargs)
        if out.logits.shape[-1]:
            out.logits = out.logits * 2
        return out

    model.forward = doubled
    with pytest.raises(LwqError, match="eval.logits_memory=null"):
        OutputHead(model)


def test_gemma2_soft_capping_is_reproduced():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "gemma2",
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        final_logit_softcapping=0.5,  # small: uncapped logits would differ a lot
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(50)  # logits well past the cap
    head = OutputHead(model)  # refuses if the capping were not reproduced
    ids = torch.arange(1, 20).unsqueeze(0)
    expected = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    ours = head.logprobs(head.final_hidden(input_ids=ids))
    assert torch.allclose(ours, expected, atol=1e-5)
    head.softcap = None  # what forgetting it would give
    assert not torch.allclose(head.logprobs(head.final_hidden(input_ids=ids)), expected, atol=0.1)


@pytest.mark.slow
def test_lm_eval_runs_fewer_rows_under_the_bound_with_the_same_perplexity(ref_model, tmp_path):
    from lwq.evaluation.suite import EvalSpec, Suite

    model, tokenizer = ref_model
    spec = EvalSpec(name="t", text="ref-heldout", chunk_chars=1500, limit=3, seed=0, max_length=128)
    results, rows = {}, {}
    for memory in (None, TINY_GB * 100):  # 2 MB: one row of 128 x 4096 logits (4 MB) at most
        suite = Suite(
            spec, data_dir=tmp_path, workdir=tmp_path, batch_size=4, logits_memory=memory
        ).prepare()
        seen = []

        def rows_of(_module, args, kwargs, seen=seen):
            seen.append((args or [kwargs["input_ids"]])[0].shape[0])

        hook = model.register_forward_pre_hook(rows_of, with_kwargs=True)
        try:
            results[memory] = suite.evaluate(model, tokenizer)["tasks"][suite.task_name]
        finally:
            hook.remove()
        rows[memory] = max(seen)
    assert rows == {None: 4, TINY_GB * 100: 1}
    for metric in ("word_perplexity", "byte_perplexity"):
        assert results[TINY_GB * 100][metric] == pytest.approx(results[None][metric], rel=1e-6)
