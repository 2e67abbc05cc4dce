"""Installing plans: originals kept, each (block, bits) built once in a monotone sweep."""

import torch

from lwq.plan import Plan, two_level_plan
from lwq.quant import make_backend
from lwq.quant.cost import SizeTable
from lwq.quant.engine import Engine
from lwq.quant.install import PlanApplier
from tests.shrunk import shrunk_model


def _rtn_applier(blocks) -> PlanApplier:
    return PlanApplier(blocks, Engine(make_backend("rtn", group_size=32)))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_sweep_quantizes_each_block_once_per_bits_and_restores_exactly():
    model = shrunk_model("llama", blocks=6)
    before = _state(model)
    blocks = model.model.layers
    applier = _rtn_applier(blocks)
    order = [4, 1, 5, 0, 2, 3]
    for k in range(7):
        applier.apply(two_level_plan(order, k, high=4, low=2))
        assert applier.current == list(two_level_plan(order, k, high=4, low=2).bits)
    assert applier.quantize_calls == 6 + 6  # each block once at 4 bits and once at 2 bits
    applier.restore()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_low_block_is_quantized_from_the_original_not_from_its_4_bit_copy():
    model = shrunk_model("llama", blocks=2)
    blocks = model.model.layers
    direct = _rtn_applier(blocks)
    direct.apply(Plan((2, 2)))
    w_direct = blocks[0].self_attn.q_proj.weight.clone()
    direct.restore()
    stepped = _rtn_applier(blocks)
    stepped.apply(Plan((4, 4)))
    stepped.apply(Plan((2, 2)))
    assert torch.equal(blocks[0].self_attn.q_proj.weight, w_direct)


def test_cost_counts_every_block_linear_and_the_rest_at_16_bits():
    model = shrunk_model("llama", blocks=4)
    blocks = model.model.layers
    sizes = SizeTable(model, blocks, make_backend("rtn", group_size=32))
    full = sizes.cost(Plan((16,) * 4))
    n_params = sum(p.numel() for p in model.parameters())
    assert full.weight_bytes == 2 * n_params
    assert full.bits_per_weight == 16.0
    mixed = sizes.cost(Plan((4, 2, 2, 4)))
    assert mixed.avg_bits == 3.0
    assert 3.0 < mixed.bits_per_weight < 3.0 + (16 + 4) / 32 + 1e-9
    assert mixed.block_bytes[1] < mixed.block_bytes[0]
