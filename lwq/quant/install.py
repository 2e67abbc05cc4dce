"""Installing a plan in a loaded model without ever reloading it.

The first time a block is changed its original is kept (the engine parks it on the
host); every quantized variant is built from that original, never from another quantized
copy, and a block is swapped only when what its variant depends on changes. A sweep that
only moves blocks downward therefore quantizes each block at most once per bit-width.
How variants are built is the engine's business (lwq.quant.engine); where originals wait
between uses (memory or a scratch file) is `originals`' (lwq.quant.originals).
"""

from __future__ import annotations

import torch

from lwq.plan import Plan
from lwq.quant.base import FULL_PRECISION, check_bits
from lwq.quant.engine import Engine
from lwq.quant.originals import InMemory, OnDisk


class PlanApplier:
    """Swaps blocks of `blocks` (a ModuleList, mutated in place) to match a plan.

    `packed` installs a kept backend's packed modules rather than their evaluated form
    (what an export writes).
    """

    def __init__(
        self,
        blocks: torch.nn.ModuleList,
        engine: Engine,
        packed: bool = False,
        originals: InMemory | OnDisk | None = None,
    ) -> None:
        self.blocks = blocks
        self.engine = engine
        self.packed = packed
        self.parked = originals or InMemory()
        self.current = [FULL_PRECISION] * len(blocks)
        self._keys: list[tuple] = [(FULL_PRECISION,)] * len(blocks)
        self._originals: dict[int, torch.nn.Module] = {}
        self.quantize_calls = 0  # quantized variants installed; a sweep's efficiency check

    def apply(self, plan: Plan) -> None:
        if len(plan.bits) != len(self.blocks):
            raise ValueError(f"plan has {len(plan.bits)} blocks, the model {len(self.blocks)}")
        for bits in plan.all_widths():
            check_bits(self.engine.backend, bits)
        for i, bits in enumerate(plan.bits):  # in order: sequential calibration relies on it
            key = self.engine.key(i, plan)
            if key != self._keys[i]:
                self.blocks[i] = self._variant(i, plan)
                self.current[i], self._keys[i] = bits, key
                self._park_unused()  # at once: a plan changing every block never holds both

    def restore(self) -> None:
        """Put every original block back (the model is then exactly as loaded)."""
        self.apply(Plan((FULL_PRECISION,) * len(self.blocks)))

    def original(self, i: int) -> torch.nn.Module:
        """Block i as loaded, wherever it is now (read back if it was parked on disk)."""
        block = self._originals.get(i)
        if block is None:
            return self.blocks[i]
        self.parked.load(i, block)
        return block

    def _park_unused(self) -> None:
        """Originals not installed go where `originals` keeps them until next needed
        (a building walk may have read them all back)."""
        waiting = [
            i
            for i, block in self._originals.items()
            if self.blocks[i] is not block and not self.parked.parked(i)
        ]
        if not waiting:
            return
        in_use = frozenset(
            t.data_ptr() for b in self.blocks for t in (*b.parameters(), *b.buffers())
        )
        for i in waiting:
            self.parked.park(i, self._originals[i], keep=in_use)

    def _variant(self, i: int, plan: Plan) -> torch.nn.Module:
        device = next(self.blocks[i].parameters()).device
        self._originals.setdefault(i, self.blocks[i])
        if plan.bits[i] == FULL_PRECISION:
            return self.original(i).to(device)
        block = self.engine.variant(i, plan, self.original, self.blocks, device, self.packed)
        self.quantize_calls += 1
        return block
