"""Importance metrics: contracts from the paper notes, on small models built here."""

import math

import pytest
import torch
from torch.nn import functional as F

from lwq.errors import LwqError
from lwq.metrics import METRICS, Scores, ranking
from lwq.metrics.ldi import _BlockDeltas
from lwq.metrics.sensitivity import _kl_and_nll, _logprobs
from lwq.metrics.zd import outlier_share
from lwq.modeling.blocks import find_blocks
from lwq.plan import Plan
from lwq.quant import make_backend
from lwq.quant.engine import Engine
from lwq.quant.install import PlanApplier
from tests.shrunk import FAMILIES, shrunk_model


def _tiny_llama(blocks=6, seed=0):
    return shrunk_model("llama", blocks=blocks, seed=seed)


class _NearIdentity(torch.nn.Module):
    """Wraps a block and shrinks its residual update: output ~ input."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, hidden_states, *args, **kwargs):
        out = self.block(hidden_states, *args, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        return hidden_states + 1e-3 * (out - hidden_states)


def _calibration(n=4, seq=16, seed=0):
    """Random token ids for the random tiny models (the reference corpus' windows are in
    tests.conftest.reference_calibration)."""
    return torch.randint(0, 128, (n, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("k", [0, 2, 5])
def test_ldi_gives_an_identity_like_block_the_lowest_score(k):
    model = _tiny_llama()
    blocks = model.model.layers
    blocks[k] = _NearIdentity(blocks[k])
    scores = METRICS.get("ldi").compute(model, blocks, _calibration())
    assert len(scores.values) == 6
    assert min(range(6), key=lambda i: scores.values[i]) == k
    assert ranking(scores)[0] == k


def test_ldi_is_finite_deterministic_and_lim_is_the_same():
    model = _tiny_llama()
    blocks = model.model.layers
    ldi = METRICS.get("ldi").compute(model, blocks, _calibration())
    again = METRICS.get("ldi").compute(model, blocks, _calibration())
    lim = METRICS.get("lim").compute(model, blocks, _calibration())
    assert ldi == again == lim
    assert all(0.0 <= v <= 2.0 for v in ldi.values)
    assert METRICS.get("lim").canonical == "ldi"


def test_ldi_runs_the_decoder_stack_only_and_equals_the_full_forward_by_hand():
    model = _tiny_llama()
    ids = _calibration()
    heads = []
    handle = model.lm_head.register_forward_hook(lambda *_: heads.append(1))
    scores = METRICS.get("ldi").compute(model, model.model.layers, ids)
    handle.remove()
    assert heads == []  # the hooks need no logits: the LM head is never run
    by_hand = [_delta_by_hand(model, i, ids).mean().item() for i in range(6)]
    assert scores.values == pytest.approx(by_hand, rel=1e-5)


def _delta_by_hand(model, block_index: int, ids: torch.Tensor) -> torch.Tensor:
    """(B, S) 1 - cos(h_in, h_out) of one block, from the model's own hidden states."""
    seen = {}
    block = model.model.layers[block_index]
    pre = block.register_forward_pre_hook(lambda _m, args: seen.setdefault("in", args[0]))
    post = block.register_forward_hook(lambda _m, _a, out: seen.setdefault("out", out))
    with torch.no_grad():
        model(input_ids=ids)
    pre.remove()
    post.remove()
    out = seen["out"][0] if isinstance(seen["out"], tuple) else seen["out"]
    return 1 - F.cosine_similarity(seen["in"], out, dim=-1)


def test_token_and_sequence_reduce_weigh_sequences_of_different_lengths_differently():
    model = _tiny_llama(blocks=2)
    short, long = _calibration(n=1, seq=4, seed=1), _calibration(n=1, seq=24, seed=2)
    a, b = _delta_by_hand(model, 1, short), _delta_by_hand(model, 1, long)
    by_token = torch.cat([a.flatten(), b.flatten()]).mean().item()
    by_sequence = (a.mean() + b.mean()).item() / 2
    assert abs(by_token - by_sequence) > 1e-4  # the case the setting exists for
    for reduce, expected in (("token", by_token), ("sequence", by_sequence)):
        deltas = _BlockDeltas(model.model.layers, reduce)
        with torch.no_grad():
            model(input_ids=short)
            model(input_ids=long)
        assert deltas.remove()[1] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(LwqError, match="token or sequence"):
        METRICS.get("ldi").compute(model, model.model.layers, _calibration(), reduce="max")


def test_zd_matches_a_hand_computed_value():
    w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 10.0, -10.0]])
    # mean 0, population std sqrt(200 / 8) = 5: |z| = 2 for the two outliers, 0 elsewhere
    assert outlier_share(w, 1.0) == (2, 8)
    assert outlier_share(w, 2.5) == (0, 8)


def test_zd_pools_the_block_linears_and_follows_the_paper_direction():
    model = _tiny_llama(blocks=3)
    blocks = model.model.layers
    scores = METRICS.get("zd").compute(model, blocks)
    first = blocks[0]
    linears = [m for m in first.modules() if isinstance(m, torch.nn.Linear)]
    counts = [outlier_share(m.weight, 1.0) for m in linears]
    assert scores.values[0] == pytest.approx(sum(c for c, _ in counts) / sum(n for _, n in counts))
    assert scores.higher_is_important is False  # smaller share = more important (paper)
    flipped = METRICS.get("zd").compute(model, blocks, direction="larger_is_important")
    assert ranking(flipped) == ranking(scores, reverse=True)


def test_random_order_is_seeded():
    model = _tiny_llama(blocks=8)
    blocks = model.model.layers
    a = METRICS.get("random").compute(model, blocks, seed=1)
    b = METRICS.get("random").compute(model, blocks, seed=1)
    c = METRICS.get("random").compute(model, blocks, seed=2)
    assert a == b and ranking(a) != ranking(c)


def test_ranking_breaks_ties_by_block_index_and_reverses():
    scores = Scores((0.5, 0.1, 0.5, 0.9))
    assert ranking(scores) == [1, 0, 2, 3]
    assert ranking(scores, reverse=True) == [3, 2, 0, 1]
    assert ranking(Scores((0.5, 0.1, 0.9), higher_is_important=False)) == [2, 0, 1]


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(LwqError, match="known: ldi, lim, position, random, sensitivity, zd"):
        METRICS.get("ldl")


def test_position_prior_is_u_shaped():
    model = _tiny_llama(blocks=7)
    scores = METRICS.get("position").compute(model, model.model.layers)
    assert scores.values[0] == scores.values[6] == 1.0 and scores.values[3] == 0.0
    order = ranking(scores)
    assert order[0] == 3 and set(order[-2:]) == {0, 6}


def test_sensitivity_is_kl_per_block_falling_with_bits_and_leaves_the_model_intact():
    model = _tiny_llama(blocks=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = model.model.layers
    engine = Engine(make_backend("rtn", group_size=32))
    scores = METRICS.get("sensitivity").compute(
        model, blocks, _calibration(), engine=engine, bits=2, table_bits=[3, 8]
    )
    assert scores.values == scores.details["kl@2"] and len(scores.values) == 4
    for i in range(4):
        assert scores.details["kl@2"][i] > scores.details["kl@3"][i] > scores.details["kl@8"][i]
        assert scores.details["kl@8"][i] > -1e-6
        assert scores.details["ppl@2"][i] != scores.details["ppl@16"][i]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(LwqError, match="must not contain 16"):
        METRICS.get("sensitivity").compute(
            model, blocks, _calibration(), engine=engine, bits=2, table_bits=[16]
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_sensitivity_runs_from_the_quantized_block_on_and_equals_full_forwards(family):
    model = shrunk_model(family, blocks=3)
    blocks = find_blocks(model)
    calibration = _calibration(n=5, seq=12)  # two batches of 4: the last one short
    engine = Engine(make_backend("rtn", group_size=32))
    runs = []
    handle = blocks[0].register_forward_pre_hook(lambda *_: runs.append(1))
    scores = METRICS.get("sensitivity").compute(
        model, blocks, calibration, engine=engine, bits=2, table_bits=[4], batch_size=4
    )
    handle.remove()
    # block 0 (2 batches each time) runs for the reference, the capture, its own two widths
    # (variants are copies, hook included) and the step past it: 5 x 2, where a full
    # forward per (block, width) would run it 7 x 2 times; + 2 single forwards of the
    # output layer's check (lwq.evaluation.logits.OutputHead)
    assert len(runs) == 12
    reference, exact_reference = _logprobs(model, calibration, 4), _exact(model, calibration)
    applier = PlanApplier(blocks, engine)
    for i in range(3):
        for b in (2, 4):
            applier.apply(Plan(tuple(b if j == i else 16 for j in range(3))))
            _, nll = _kl_and_nll(reference, _logprobs(model, calibration, 4), calibration)
            exact = _kl_and_nll(exact_reference, _exact(model, calibration), calibration)[0]
            # float64 log-probabilities are the truth; the float32 whole-logits formula
            # is off by up to 1e-3 relative on these small KLs, the bounded one by < 1e-4
            assert scores.details[f"kl@{b}"][i] == pytest.approx(exact, rel=1e-4, abs=1e-9), (i, b)
            assert scores.details[f"ppl@{b}"][i] == pytest.approx(math.exp(nll), rel=1e-6)
    applier.restore()


def _exact(model, calibration) -> list[torch.Tensor]:
    """The whole log-probabilities in float64, batch by batch as `_logprobs`."""
    with torch.no_grad():
        return [
            torch.log_softmax(model(input_ids=calibration[i : i + 4]).logits[:, :-1].double(), -1)
            for i in range(0, len(calibration), 4)
        ]
