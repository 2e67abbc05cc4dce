"""Prefix reuse (lwq.modeling.prefix): plans evaluated from their first block that differs
from an evaluated plan give bit-identical perplexity, KL and top-1 (lwq's pass and
lm-eval's), skip the blocks they share, never match another input, and stay within their
memory; the order and savings arithmetic on hand-made plans."""

from __future__ import annotations

import pytest
import torch

from lwq.data import chunk_documents, load_texts, seeded_subset
from lwq.evaluation.divergence import KLMeter, TopKCollector
from lwq.evaluation.perplexity import perplexity
from lwq.modeling.blocks import find_blocks
from lwq.modeling.prefix import (
    PrefixCache,
    block_forwards,
    boundaries_wanted,
    order_for_reuse,
    prefix_digests,
)
from lwq.plan import Plan
from lwq.quant import make_backend
from lwq.quant.engine import Engine
from lwq.quant.install import PlanApplier
from tests.conftest import ROOT
from tests.shrunk import shrunk_model
from tests.test_logits import ByteTokenizer


def _texts(n: int = 3) -> list[str]:
    return seeded_subset(chunk_documents(load_texts("ref-heldout", ROOT), 1200), n, seed=1)


def _plans(depth: int) -> list[Plan]:
    """Two-level plans whose low blocks sit deep, as an ordering's points do."""
    plans = [Plan((16,) * depth), Plan((4,) * depth)]
    for k in range(1, depth + 1):
        plans.append(Plan((4,) * (depth - k) + (2,) * k))
    return plans


def _sweep(model, tokenizer, cache: PrefixCache | None) -> list[tuple]:
    """(NLL, KL stats) of every plan, in the reuse order, each kept boundary wanted."""
    blocks = find_blocks(model)
    engine = Engine(make_backend("rtn", group_size=32))
    applier = PlanApplier(blocks, engine)
    options = {"max_length": 64, "batch_size": 2}  # whole logits: every forward is a batch
    collector = TopKCollector(8)
    perplexity(model, tokenizer, _texts(), each=collector, **options)
    reference = collector.result()
    plans = _plans(len(blocks))
    keys = [engine.keys(p) for p in plans]
    order = order_for_reuse(keys)
    out = []
    try:
        for n, i in enumerate(order):
            applier.apply(plans[i])
            meter = KLMeter(reference)
            later = [keys[j] for j in order[n + 1 :]]
            if cache is None:
                nll = perplexity(model, tokenizer, _texts(), each=meter, **options).nll
            else:
                with cache.reusing(blocks, keys[i], boundaries_wanted(keys[i], later)):
                    nll = perplexity(model, tokenizer, _texts(), each=meter, **options).nll
            out.append((nll, meter.stats()))
    finally:
        applier.restore()
    return out


@pytest.mark.parametrize("which", ["ref-tiny", "shrunk-gqa-llama"])
def test_reused_prefixes_give_bit_identical_numbers_and_skip_shared_blocks(which, ref_model):
    if which == "ref-tiny":
        model, tokenizer = ref_model
    else:
        model, tokenizer = shrunk_model("llama", blocks=6, num_key_value_heads=2), ByteTokenizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cache = PrefixCache(memory_gb=1.0)
    assert _sweep(model, tokenizer, cache) == _sweep(model, tokenizer, None)  # exactly
    depth = len(find_blocks(model))
    expected_run, full = block_forwards(
        [Engine(make_backend("rtn")).keys(p) for p in _sorted(_plans(depth))], depth
    )
    assert cache.blocks_skipped > 0
    # the measured share is the plans' arithmetic: every boundary a later plan wants is kept
    measured = cache.blocks_run / (cache.blocks_run + cache.blocks_skipped)
    assert measured == pytest.approx(expected_run / full)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _sorted(plans: list[Plan]) -> list[Plan]:
    engine = Engine(make_backend("rtn"))
    return [plans[i] for i in order_for_reuse([engine.keys(p) for p in plans])]


def test_another_input_never_matches_and_the_memory_bound_holds(ref_model):
    model, tokenizer = ref_model
    blocks = find_blocks(model)
    keys = [(16,)] * len(blocks)
    options = {"max_length": 64, "batch_size": 2, "logits_memory": 1e-4}
    cache = PrefixCache(memory_gb=1.0)
    with cache.reusing(blocks, keys, {3}):
        perplexity(model, tokenizer, _texts(), **options)
    skipped = cache.blocks_skipped
    other = seeded_subset(chunk_documents(load_texts("ref-heldout", ROOT), 1200), 3, seed=2)
    with cache.reusing(blocks, keys, set()):
        perplexity(model, tokenizer, other, **options)
    assert cache.blocks_skipped == skipped  # other texts: nothing reused
    with cache.reusing(blocks, [(4,)] + keys[1:], set()):
        perplexity(model, tokenizer, _texts(), **options)
    assert cache.blocks_skipped == skipped  # another block 0: nothing reused
    with cache.reusing(blocks, keys, set()):
        perplexity(model, tokenizer, _texts(), **options)
    assert cache.blocks_skipped > skipped  # the same input and prefix: reused
    held = cache.held
    small = PrefixCache(memory_gb=held / 1e9 / 2)  # half of what the pass wants to keep
    with small.reusing(blocks, keys, {3}):
        perplexity(model, tokenizer, _texts(), **options)
    assert 0 < small.held <= small.limit
    small.wanted_only(set())
    assert small.held == 0


def test_order_boundaries_and_savings_on_hand_made_plans():
    a, b, c = (4,), (2,), (16,)
    plans = [(a, a, b, b), (a, a, a, a), (c, c, c, c), (a, a, a, b), (a, b, b, b)]
    order = order_for_reuse(plans)
    ordered = [plans[i] for i in order]
    # lexicographic on the keys' text: "(16,)" < "(2,)" < "(4,)"
    assert ordered == [(c, c, c, c), (a, b, b, b), (a, a, b, b), (a, a, a, b), (a, a, a, a)]
    assert boundaries_wanted(ordered[1], ordered[2:]) == {1}
    assert boundaries_wanted(ordered[2], ordered[3:]) == {2}
    # runs: 4, 4, 3 (from block 1), 2 (from 2), 1 (from 3) = 14 of 20
    assert block_forwards(ordered, 4) == (14, 20)
    assert block_forwards([(a, a), (a, a)], 2) == (3, 4)  # the same plan still runs its last
    digests = prefix_digests(ordered[1])
    assert len(digests) == 5 and digests[1] == prefix_digests(ordered[2])[1]
    assert digests[2] != prefix_digests(ordered[2])[2]


@pytest.mark.slow
def test_a_sweep_with_reuse_records_the_numbers_of_one_without(tmp_path, capsys):
    """Every-k on ref-tiny (13 points, KL on, lm-eval and lwq passes): the same records,
    fewer block-forwards, and the sweep says so."""
    from lwq.commands.sweep import run_sweep
    from tests.conftest import compose_config, records, small_run_overrides

    results = {}
    for memory in (0.5, 0):
        base = tmp_path / f"reuse-{memory}"
        overrides = [
            *small_run_overrides(base),
            "sweep.fractions=null",
            f"eval.reuse_memory={memory}",
        ]
        run_sweep(compose_config(*overrides, "sweep.blocks=[0,1,2,3,4,5,6,7,8,9,10,11,12]"))
        results[memory] = {r["point_key"]: r["eval"] for r in records(base)}
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert results[0.5] == results[0] and len(results[0]) == 14
    assert "in the order that shares most blocks" in said
    ran = [line for line in said.splitlines() if line.startswith("prefix reuse: ran")]
    assert ran and "0% skipped" not in ran[0]
