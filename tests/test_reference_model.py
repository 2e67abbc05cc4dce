"""The embedded reference model: good enough to mean something, and reproducible."""

import json

import pytest
import torch

from lwq.evaluation.perplexity import perplexity
from lwq.reference.corpus import load_split
from tests.conftest import REF_MODEL
from tools.train_reference import (
    TrainConfig,
    build_model,
    token_stream,
    train_loop,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def card():
    return json.loads((REF_MODEL / "card.json").read_text())


def test_card_shows_it_beats_a_unigram_model_tenfold(card):
    assert card["heldout_perplexity"] <= card["unigram_heldout_perplexity"] / 10


@pytest.mark.slow
def test_card_perplexity_is_what_the_committed_weights_give(card, ref_model):
    model, tokenizer = ref_model
    texts = [d.text for d in load_split("heldout")]
    ppl = perplexity(model, tokenizer, texts, max_length=card["train_config"]["seq_len"])
    assert ppl.tokens == card["heldout_tokens"]
    assert ppl.token_perplexity == pytest.approx(card["heldout_perplexity"], rel=1e-4)


def test_shape_suits_every_backend(ref_model):
    model, _ = ref_model
    assert model.config.num_hidden_layers >= 12
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert module.in_features % 64 == 0 and module.out_features % 64 == 0, name


@pytest.mark.slow
def test_training_is_deterministic():
    texts = [d.text for d in load_split("calib")][:5]
    cfg = TrainConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        blocks=2,
        heads=2,
        kv_heads=1,
        seq_len=32,
        batch_size=2,
        steps=3,
        warmup=1,
    )
    weights = []
    for _ in range(2):
        tokenizer = train_tokenizer(texts, cfg.vocab_size)
        model = build_model(cfg, tokenizer)
        losses = train_loop(model, token_stream(texts, tokenizer), cfg)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert losses[-1] < losses[0]
    assert torch.equal(weights[0], weights[1])
