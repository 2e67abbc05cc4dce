"""The engine's walk for a window backend (blocks calibrated together, as SliderQuant):
one calibration per plan, a block rebuilt exactly when a bit-width in its reach changes,
and a finished calibration read back from the disk store instead of run again.

The window backend here is a stand-in: it rounds each block's linears (rtn) at the
plan's bits and records every call, so what is asserted is the engine's bookkeeping.
"""

from __future__ import annotations

import torch

from lwq.modeling.blocks import block_linears, find_blocks
from lwq.modeling.capture import BlockInputs
from lwq.plan import Plan
from lwq.quant import make_backend
from lwq.quant.base import FULL_PRECISION, Window
from lwq.quant.engine import Engine, quantize_linears
from lwq.quant.install import PlanApplier
from lwq.quant.store import VariantStore
from tests.shrunk import shrunk_model


class Neighbours(Window):
    """Block i depends on the bits of blocks i-1, i and i+1."""

    def reach(self, i: int, n: int) -> range:
        return range(max(0, i - 1), min(n, i + 2))


class WindowedRounding:
    name = "windowed"
    unit = Neighbours()
    supported_bits = frozenset({2, 4, 8, FULL_PRECISION})

    def __init__(self) -> None:
        self.rtn = make_backend("rtn", group_size=32)
        self.calibrations: list[tuple[int, ...]] = []

    def settings(self) -> dict:
        return {}

    def quantize(self, blocks, bits, inputs):
        assert isinstance(inputs, BlockInputs) and inputs.index == 0
        self.calibrations.append(tuple(bits))
        for block, b in zip(blocks, bits, strict=True):
            quantize_linears(block, self.rtn, b)
        return blocks

    def state(self, block):
        return {k: v.detach().clone() for k, v in block.state_dict().items()}

    def restore(self, original, bits, state):
        original.load_state_dict(state)
        return original

    def for_eval(self, block):
        return block

    def held_bytes(self, module):
        return self.rtn.held_bytes(module)

    def weight_bytes(self, module, bits):
        return self.rtn.weight_bytes(module, bits)


def _setup(store=None):
    model = shrunk_model("llama", blocks=6)
    blocks = find_blocks(model)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    backend = WindowedRounding()
    engine = Engine(backend, lambda: BlockInputs.capture(model, blocks, ids), store=store)
    return blocks, backend, engine


def _weights(block) -> list[torch.Tensor]:
    return [m.weight.detach().clone() for _, m in block_linears(block)]


def test_a_window_backend_calibrates_once_per_plan_and_keys_blocks_by_their_reach():
    blocks, backend, engine = _setup()
    n = len(blocks)
    plan = Plan((4,) * n)
    assert engine.key(2, plan) == (4, (4, 4, 4))
    far = Plan((2,) + (4,) * (n - 1))  # block 0 changed: outside block 2's reach
    assert engine.key(2, far) == engine.key(2, plan)
    assert engine.key(1, far) != engine.key(1, plan)
    applier = PlanApplier(blocks, engine)
    try:
        applier.apply(plan)
        assert backend.calibrations == [plan.bits]  # every block from one calibration
        applier.apply(far)
        assert backend.calibrations == [plan.bits, far.bits]
        assert engine.builds == 2 * n
        applier.apply(Plan((FULL_PRECISION,) + (4,) * (n - 1)))
        # a 16-bit block is the original; blocks 1.. see a new plan in reach of block 1
        assert len(backend.calibrations) == 3
    finally:
        applier.restore()


def test_only_the_latest_plans_blocks_are_kept_in_memory():
    """A sweep of a window backend calibrates one plan a point: the engine keeps the blocks
    of the plan calibrated last, not of every point (SmolLM2: 405 MB a plan in float32)."""
    blocks, backend, engine = _setup()
    n = len(blocks)
    plans = [Plan((4,) * n), Plan((2,) * 3 + (4,) * (n - 3)), Plan((2,) * n)]
    applier = PlanApplier(blocks, engine)
    try:
        for plan in plans:
            applier.apply(plan)
            assert sorted(engine._kept) == sorted((i, *engine.key(i, plan)) for i in range(n))
        assert backend.calibrations == [p.bits for p in plans]
    finally:
        applier.restore()


def test_a_finished_window_calibration_is_read_back_from_the_store(tmp_path):
    store_dir = tmp_path / "variants"
    identity = {"model": "shrunk", "quant": {"name": "windowed"}}
    blocks, backend, engine = _setup(VariantStore(store_dir, identity))
    plan = Plan((8, 2, 4, 4, 2, 8))
    applier = PlanApplier(blocks, engine)
    applier.apply(plan)
    built = [_weights(b) for b in blocks]
    applier.restore()
    again_blocks, again, engine2 = _setup(VariantStore(store_dir, identity))
    applier2 = PlanApplier(again_blocks, engine2)
    applier2.apply(plan)
    try:
        assert again.calibrations == []  # read from disk, not calibrated again
        for ours, theirs in zip(built, [_weights(b) for b in again_blocks], strict=True):
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    finally:
        applier2.restore()
