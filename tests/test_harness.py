"""lm-eval harness: agrees with our perplexity(), never serves stale numbers, stays offline."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from lwq.errors import LwqError
from lwq.evaluation.harness import Harness, PerplexityTask, lm_eval_version
from lwq.evaluation.perplexity import perplexity, rolling_windows
from tests.shrunk import shrunk_model

MAX_LENGTH = 32  # small, so the long text needs several rolling windows
BATCH_SIZE = 3  # odd, so windows of different lengths share padded batches

PARAGRAPHS = [
    "Quantization maps every weight of a layer to one of a few levels. Fewer bits mean "
    "fewer levels and a larger rounding error, which the next layers then amplify.",
    "Layer-wise schemes give each block its own number of bits. An importance score "
    "ranks the blocks, and the least important ones are quantized most aggressively.",
    "Perplexity is the exponential of the mean negative log-likelihood per unit: per "
    "token, per word or per byte. Only words and bytes compare across tokenizers.",
    "The quick brown fox jumps over the lazy dog while the evaluation harness counts "
    "every token exactly once, window after window, from the first to the last.",
]
TEXTS = (
    " ".join(PARAGRAPHS),  # longer than MAX_LENGTH: rolling windows, a short last one
    "A short document.",
    "[1, 2, 3]",  # looks like a list: lm-eval literal_evals a Jinja-rendered target
    PARAGRAPHS[2],
)


def byte_level_bpe(special_tokens: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(PARAGRAPHS * 4, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    """GPT-2 style: one <|endoftext|> token as bos/eos/pad, nothing added on encode."""
    end = "<|endoftext|>"
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe([end]), bos_token=end, eos_token=end, pad_token=end
    )


@pytest.fixture(scope="module")
def bos_tokenizer():
    """Llama style: encode() prepends <s> unless add_special_tokens=False."""
    tokenizer = byte_level_bpe(["<s>", "</s>"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


@pytest.fixture(scope="module")
def model():
    return shrunk_model("llama", blocks=2, vocab_size=512)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return Harness(
        [PerplexityTask("docs", TEXTS), PerplexityTask("one", (PARAGRAPHS[1],))],
        workdir=tmp_path_factory.mktemp("harness"),
        batch_size=BATCH_SIZE,
        max_length=MAX_LENGTH,
    ).prepare()


@pytest.fixture(scope="module")
def scores(harness, model, tokenizer):
    return harness.evaluate(model, tokenizer)


def assert_agrees(scores: dict[str, float], reference, rel: float = 1e-4) -> None:
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert scores[metric] == pytest.approx(getattr(reference, metric), rel=rel), metric


def test_texts_exercise_a_short_last_window(tokenizer):
    ids = tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    assert len(ids) > 2 * MAX_LENGTH and len(ids) % MAX_LENGTH != 0


@pytest.mark.parametrize("max_length", [1, 2, 5, 32])
def test_rolling_windows_are_lm_evals(max_length):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    for n in range(1, 80):
        ids = list(range(100, 100 + n))
        theirs = []
        for context, targets in map(
            make_disjoint_window, get_rolling_token_windows(ids, 7, max_length, context_len=1)
        ):
            # what HFLM._loglikelihood_tokens feeds the model for one window
            theirs.append(((context + targets)[-(max_length + 1) :][:-1], targets))
        assert rolling_windows(ids, 7, max_length) == theirs


def test_harness_agrees_with_perplexity(scores, model, tokenizer):
    assert set(scores) == {"docs", "one"}
    for name, texts in (("docs", TEXTS), ("one", (PARAGRAPHS[1],))):
        reference = perplexity(model, tokenizer, list(texts), max_length=MAX_LENGTH)
        assert_agrees(scores[name], reference)


def test_scores_are_finite_and_above_one(scores):
    for task_scores in scores.values():
        assert set(task_scores) == {"word_perplexity", "byte_perplexity", "bits_per_byte"}
        for value in task_scores.values():
            assert math.isfinite(value) and value > 1


def test_second_evaluate_sees_the_modified_model(harness, scores, model, tokenizer):
    weight = model.model.layers[0].mlp.down_proj.weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(4.0)
    try:
        modified = harness.evaluate(model, tokenizer)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    again = harness.evaluate(model, tokenizer)
    for name in scores:
        assert modified[name]["word_perplexity"] != pytest.approx(
            scores[name]["word_perplexity"], rel=1e-3
        )
        assert again[name] == pytest.approx(scores[name], rel=1e-9)


def test_reused_requests_start_empty_at_every_call(harness, scores, model, tokenizer):
    """Responses of one call never reach the next (lm-eval reads resps[0] of each request)."""
    harness.evaluate(model, tokenizer)
    task = harness._loaded["docs"]
    first = task.instances
    harness.evaluate(model, tokenizer)
    assert task.instances is not first and len(task.instances) == len(first)
    assert all(len(instance.resps) == 1 for instance in task.instances)
    assert all(len(instance.resps) == 1 for instance in first)  # untouched by the 2nd call


def test_limit_evaluates_only_the_first_document(harness, scores, model, tokenizer):
    limited = (
        Harness(
            [PerplexityTask("docs", TEXTS)],
            workdir=harness.workdir,
            batch_size=BATCH_SIZE,
            max_length=MAX_LENGTH,
            limit=1,
        )
        .prepare()
        .evaluate(model, tokenizer)
    )
    first = perplexity(model, tokenizer, [TEXTS[0]], max_length=MAX_LENGTH)
    assert_agrees(limited["docs"], first)
    assert limited["docs"]["word_perplexity"] != pytest.approx(scores["docs"]["word_perplexity"])


def test_bos_adding_tokenizer_scores_only_the_text(tmp_path, model, bos_tokenizer):
    assert bos_tokenizer("a b")["input_ids"][0] == bos_tokenizer.bos_token_id
    harness = Harness(
        [PerplexityTask("docs", TEXTS)],
        workdir=tmp_path,
        batch_size=BATCH_SIZE,
        max_length=MAX_LENGTH,
    ).prepare()
    reference = perplexity(model, bos_tokenizer, list(TEXTS), max_length=MAX_LENGTH)
    assert_agrees(harness.evaluate(model, bos_tokenizer)["docs"], reference)


def test_files_are_rewritten_only_when_texts_change(tmp_path, model, tokenizer):
    def make(texts):
        task = PerplexityTask("docs", texts)
        return Harness(
            [task], workdir=tmp_path, batch_size=BATCH_SIZE, max_length=MAX_LENGTH
        ).prepare()

    make(TEXTS[:2])
    files = sorted(tmp_path.glob("docs.*"))
    assert [f.name for f in files] == ["docs.jsonl", "docs.yaml"]
    stamps = [f.stat().st_mtime_ns for f in files]
    make(TEXTS[:2])
    assert [f.stat().st_mtime_ns for f in files] == stamps

    changed = make(TEXTS[2:])  # new documents, same task name and workdir
    assert files[0].stat().st_mtime_ns != stamps[0]
    assert files[1].stat().st_mtime_ns == stamps[1]
    reference = perplexity(model, tokenizer, list(TEXTS[2:]), max_length=MAX_LENGTH)
    assert_agrees(changed.evaluate(model, tokenizer)["docs"], reference)


def test_evaluate_stays_offline_and_leaves_rngs_alone(tmp_path, model, tokenizer, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    # Online as far as the libraries know: the harness itself must switch them offline.
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(datasets.config, name, False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # `datasets` pings the Hub on every load_dataset unless it believes it is offline.
    harness = Harness(
        [PerplexityTask("docs", TEXTS[:2])],
        workdir=tmp_path,
        batch_size=BATCH_SIZE,
        max_length=MAX_LENGTH,
    ).prepare()
    lookups = []
    real_getaddrinfo = socket.getaddrinfo

    def recording_getaddrinfo(host, *args, **kwargs):
        lookups.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording_getaddrinfo)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    harness.evaluate(model, tokenizer)
    assert lookups == []
    assert torch.equal(torch.rand(3), expected)  # simple_evaluate reseeds unless told not to


def test_versions(harness):
    assert harness.task_versions() == {"docs": 1, "one": 1}
    assert lm_eval_version() == "0.4.13"


@pytest.mark.parametrize(
    "name, texts, match",
    [
        ("docs", (), "no texts"),
        ("docs", ("fine", "  \n"), "text 1 is empty"),
        ("docs", ("fine", None), "text 1 is a NoneType"),
        ("docs", "a string, not a tuple", "tuple of strings"),
        ("bad name", ("fine",), "bad task name"),
    ],
)
def test_bad_task_raises(name, texts, match):
    with pytest.raises(LwqError, match=match):
        PerplexityTask(name, texts)


@pytest.mark.parametrize(
    "tasks, kwargs, match",
    [
        ([], {}, "no tasks"),
        ([PerplexityTask("a", ("x",)), PerplexityTask("a", ("y",))], {}, "more than once"),
    ],
)
def test_bad_harness_raises(tmp_path, tasks, kwargs, match):
    with pytest.raises(LwqError, match=match):
        Harness(tasks, workdir=tmp_path, **{"batch_size": 2, "max_length": 8, **kwargs})


def test_max_length_beyond_the_model_raises(tmp_path, model, tokenizer):
    too_long = model.config.max_position_embeddings + 1
    harness = Harness(
        [PerplexityTask("a", ("x",))], workdir=tmp_path, batch_size=2, max_length=too_long
    ).prepare()
    with pytest.raises(LwqError, match="max_position_embeddings"):
        harness.evaluate(model, tokenizer)


def test_an_lm_eval_other_than_the_one_the_overrides_were_written_for_is_refused(monkeypatch):
    from lwq.evaluation import lm_eval_internals

    lm_eval_internals.check_version()  # the pinned one passes
    monkeypatch.setattr(lm_eval_internals, "lm_eval_version", lambda: "0.4.99")
    with pytest.raises(LwqError, match=r"written for 0\.4\.13: pip install lm-eval==0\.4\.13"):
        lm_eval_internals.check_version()


def test_a_harness_does_no_io_until_it_is_prepared(tmp_path, model, tokenizer):
    """Construction keeps its arguments; `prepare()` is where files are written."""
    workdir = tmp_path / "tasks"
    harness = Harness(
        [PerplexityTask("a", ("x y z",))], workdir=workdir, batch_size=2, max_length=8
    )
    assert not workdir.exists()
    with pytest.raises(LwqError, match=r"call Harness\(...\).prepare\(\) first"):
        harness.evaluate(model, tokenizer)
    assert harness.prepare() is harness and (workdir / "a.yaml").is_file()
