"""Bounded log-probabilities (lwq.evaluation.logits): a few positions at a time give the
numbers of whole logits (perplexity, KL, top-1; lwq's pass and lm-eval's, whose requests
lwq answers itself when one row does not fit), on ref-tiny and on a shrunk GQA Llama; a
model whose forward changes its logits in a way lwq does not reproduce is refused, and
Gemma-2's soft-capping is reproduced."""

from __future__ import annotations

import pytest
import torch

from lwq.data import chunk_documents, load_texts, seeded_subset
from lwq.errors import LwqError
from lwq.evaluation.divergence import KLMeter, TopKCollector
from lwq.evaluation.lm_eval_internals import rows_within
from lwq.evaluation.logits import DEFAULT_GB, ChunkLogprobs, OutputHead, rows_per_chunk
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
    # 10 MB: two rows of 128 x 4096 logits and log-softmax (4 MB each); 20 kB: not one
    # row, lwq answers lm-eval's requests
    for memory in (None, TINY_GB * 500, TINY_GB):
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
    assert rows == {None: 4, TINY_GB * 500: 2, TINY_GB: 4}
    for metric in ("word_perplexity", "byte_perplexity"):
        for memory in (TINY_GB * 500, TINY_GB):
            assert results[memory][metric] == pytest.approx(results[None][metric], rel=1e-6)


def _requests(vocab: int, greedy: list[int]) -> list[tuple]:
    """lm-eval log-likelihood requests: rolling windows (one-token context), contexts
    longer than the window (truncated on the left), one-token continuations, a cache key,
    and `greedy`, a continuation that is the model's own argmax."""
    generator = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(1, vocab, (n,), generator=generator).tolist()

    return [
        (None, ids(1), ids(64)),  # a whole rolling window
        (None, ids(1), ids(17)),
        (("a", "b"), ids(30), ids(5)),
        (None, ids(90), ids(8)),  # 98 tokens: truncated to the last 65
        (None, ids(12), ids(1)),
        (None, greedy[:1], greedy[1:]),
        (None, ids(40), ids(24)),
    ]


@pytest.mark.parametrize("which", ["ref-tiny", "shrunk-gqa-llama"])
def test_lm_evals_requests_are_answered_a_few_positions_at_a_time(which, ref_model, monkeypatch):
    """When not one row of lm-eval's logits fits the bound, lwq answers its requests with
    HFLM's numbers, and the output layer never sees more than a chunk of positions."""
    from lwq.evaluation.lm_eval_internals import encode_once_hflm

    model, tokenizer = ref_model
    if which != "ref-tiny":
        model = shrunk_model("llama", num_key_value_heads=2, vocab_size=len(tokenizer))
    lm = encode_once_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=3, max_length=64)
    lm.lwq_quiet = True
    head = OutputHead(model)
    start = torch.tensor([[5]])
    with torch.no_grad():  # a continuation every token of which is the model's argmax
        for _ in range(4):
            start = torch.cat([start, model(input_ids=start).logits[:, -1:].argmax(-1)], dim=1)
    requests = _requests(head.vocab, start[0].tolist())
    whole = lm._loglikelihood_tokens(requests)

    memory = TINY_GB * 10  # 200 kB: one row of 64 x vocab float32 logits is 1-2 MB
    rows = rows_per_chunk(head.vocab, memory)
    assert 1 < rows < 64
    seen = []
    into = OutputHead.logits_into  # the output layer applied to a chunk, into its buffer

    def watched(self, hidden, out):
        seen.append(len(hidden))
        return into(self, hidden, out)

    monkeypatch.setattr(OutputHead, "logits_into", watched)
    lm.lwq_logits_memory = memory
    bounded = lm._loglikelihood_tokens(requests)
    assert 0 < max(seen) <= rows
    assert [g for _, g in bounded] == [g for _, g in whole]
    assert bounded[5][1] and not bounded[0][1]  # the argmax continuation, a random one
    for (ours, _), (theirs, _) in zip(bounded, whole, strict=True):
        assert ours == pytest.approx(theirs, rel=1e-6)


@pytest.mark.parametrize("scale", [None, 0.125])
@pytest.mark.parametrize("with_bias", [False, True])
def test_logits_written_into_a_buffer_equal_the_output_layer_bit_for_bit(scale, with_bias):
    """The reused buffer (sensitivity, plan search) gets the numbers of the model's own
    output layer: mm or addmm as its forward, a logit scale (Cohere's) applied alike."""
    head = OutputHead(shrunk_model("llama"))
    head.scale = scale
    if with_bias:
        head.output.bias = torch.nn.Parameter(torch.randn(head.vocab))
    hidden = torch.randn(37, head.output.in_features)
    buffer = torch.full((40, head.vocab), float("nan"))
    written = head.logits_into(hidden, buffer[:37])
    assert written.data_ptr() == buffer.data_ptr()
    assert torch.equal(written, head.logits(hidden))


@pytest.mark.parametrize("rows", [1, 7, 169, 600])
def test_log_probabilities_in_place_equal_the_log_softmax_bit_for_bit(rows):
    """The evaluation's chunks: the log-softmax written over the logits in their buffer
    gives F.log_softmax's numbers exactly (the kernel reads a row before writing it)."""
    head = OutputHead(shrunk_model("llama"))
    hidden = torch.randn(rows, head.output.in_features) * 4
    buffer = torch.empty(rows, head.vocab)
    assert torch.equal(head.logprobs_into(hidden, buffer), head.logprobs(hidden))


def test_every_chunk_reuses_one_buffer_grown_only_for_a_larger_chunk():
    head = OutputHead(shrunk_model("llama"))
    logprobs_of = ChunkLogprobs(head)
    width = head.output.in_features
    first = logprobs_of(torch.randn(12, width))
    address = first.data_ptr()
    for n in (12, 5, 12):
        hidden = torch.randn(n, width)
        out = logprobs_of(hidden)
        assert out.data_ptr() == address and out.shape == (n, head.vocab)
        assert torch.equal(out, head.logprobs(hidden))
    assert logprobs_of(torch.randn(20, width)).shape == (20, head.vocab)  # grown


def test_logits_under_autocast_are_the_output_layers_own():
    """mm(out=) is not autocast: under bf16 autocast the buffer gets the layer's forward
    (bf16 matmul) widened, as the evaluation's numbers were without a buffer."""
    head = OutputHead(shrunk_model("llama"))
    hidden = torch.randn(9, head.output.in_features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        written = head.logits_into(hidden, torch.empty(9, head.vocab))
        assert torch.equal(written, head.logits(hidden))
    assert not torch.equal(written, head.logits(hidden))  # bf16's numbers, not float32's


def test_every_eval_preset_bounds_logits_at_the_callers_default():
    """The code's fallback (a context or meter built without the config) and the presets
    agree, so a run and a library call hold the same chunks."""
    import yaml

    presets = sorted((ROOT / "conf" / "eval").glob("*.yaml"))
    assert presets
    for preset in presets:
        assert yaml.safe_load(preset.read_text())["logits_memory"] == DEFAULT_GB, preset.name
