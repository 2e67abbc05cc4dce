"""Installing a plan in a loaded model without ever reloading it.

The first time a block is changed its original is kept (on `keep_on`, the host by
default); every quantized variant is built from that original, never from another
quantized copy. A sweep that only moves blocks downward therefore quantizes each block
at most once per bit-width. A backend may hand back a different module for a linear
(bitsandbytes, quanto, HQQ): it is installed into the copy under the linear's name.
"""

from __future__ import annotations

import copy
import weakref

import torch

from lwq.errors import LwqError
from lwq.models import block_linears
from lwq.plan import Plan
from lwq.quant.base import FULL_PRECISION, Backend, check_bits

# quantized variant -> the original block it was built from (sizes are planned on originals)
_ORIGINALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def original_of(block: torch.nn.Module) -> torch.nn.Module:
    """The block as loaded: `block` itself unless a PlanApplier built it as a variant."""
    return _ORIGINALS.get(block, block)


def quantize_block(block: torch.nn.Module, backend: Backend, bits: int, where: str = "") -> None:
    """Quantize every linear of `block` (mutated: replacements installed by name)."""
    for name, module in block_linears(block):
        try:
            installed = backend.quantize(module, bits)
        except LwqError as err:
            raise LwqError(f"{where}{name}: {err}") from err
        if installed is not module:
            block.set_submodule(name, installed)


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
        quantize_block(block, self.backend, bits, where=f"block {i} ")
        _ORIGINALS[block] = original
        self.quantize_calls += 1
        return block
