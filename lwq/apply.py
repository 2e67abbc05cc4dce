"""Installing a plan in a loaded model without ever reloading it.

The first time a block is changed its original is kept (on `keep_on`, the host by
default); every quantized variant is built from that original, never from another
quantized copy. A sweep that only moves blocks downward therefore quantizes each block
at most once per bit-width.
"""

from __future__ import annotations

import copy

import torch

from lwq.models import block_linears
from lwq.plan import Plan
from lwq.quant.base import FULL_PRECISION, Backend, check_bits


class PlanApplier:
    """Swaps blocks of `blocks` (a ModuleList, mutated in place) to match a plan."""

    def __init__(self, blocks: torch.nn.ModuleList, backend: Backend, keep_on="cpu") -> None:
        self.blocks = blocks
        self.backend = backend
        self.keep_on = torch.device(keep_on)
        self.current = [FULL_PRECISION] * len(blocks)
        self._originals: dict[int, torch.nn.Module] = {}
        self.quantize_calls = 0  # (block, bits) variants built; a sweep's efficiency check

    def apply(self, plan: Plan) -> None:
        for bits in set(plan.bits):
            check_bits(self.backend, bits)
        for i, bits in enumerate(plan.bits):
            if bits != self.current[i]:
                self.blocks[i] = self._variant(i, bits)
                self.current[i] = bits

    def restore(self) -> None:
        """Put every original block back (the model is then exactly as loaded)."""
        self.apply(Plan((FULL_PRECISION,) * len(self.blocks)))

    def _variant(self, i: int, bits: int) -> torch.nn.Module:
        device = next(self.blocks[i].parameters()).device
        original = self._originals.setdefault(i, self.blocks[i])
        if bits == FULL_PRECISION:
            return original.to(device)
        original.to(self.keep_on)  # in place: the live original leaves the accelerator
        block = copy.deepcopy(original).to(device)
        for _, module in block_linears(block):
            self.backend.quantize(module, bits)
        self.quantize_calls += 1
        return block
