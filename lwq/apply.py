"""Installing a plan in a loaded model without ever reloading it.

The first time a block is changed its original is kept (on `keep_on`, the host by
default); every quantized variant is built from that original, never from another
quantized copy. A sweep that only moves blocks downward therefore quantizes each block
at most once per bit-width. A backend may hand back a different module for a linear
(bitsandbytes, quanto, HQQ): it is installed into the copy under the linear's name.
A calibrated backend (GPTQ) gets its blocks from `CalibratedVariants`, which builds each
at most once per (block, bits) and the inputs it was calibrated on.
"""

from __future__ import annotations

import copy
import weakref

import torch

from lwq.block_inputs import BlockInputs
from lwq.calibrated import CalibratedVariants
from lwq.errors import LwqError
from lwq.models import block_linears
from lwq.plan import Plan
from lwq.quant.base import FULL_PRECISION, Backend, check_bits

# quantized variant -> the original block it was built from (sizes are planned on originals)
_ORIGINALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def original_of(block: torch.nn.Module) -> torch.nn.Module:
    """The block as loaded: `block` itself unless a PlanApplier built it as a variant."""
    return _ORIGINALS.get(block, block)


def quantize_block(
    block: torch.nn.Module,
    backend: Backend,
    bits: int,
    where: str = "",
    inputs: BlockInputs | None = None,
) -> None:
    """Quantize every linear of `block` (mutated: replacements installed by name).

    A calibrated backend quantizes the block as a whole on `inputs`, the hidden states
    entering it, and the block is then made ready for evaluation.
    """
    if getattr(backend, "calibrated", False):
        if inputs is None:
            raise LwqError(f"quant={backend.name} needs the calibration inputs of {where}block")
        try:
            backend.quantize_block(block, bits, inputs)
        except LwqError as err:
            raise LwqError(f"{where}{err}") from err
        backend.for_eval(block)
        return
    for name, module in block_linears(block):
        try:
            installed = backend.quantize(module, bits)
        except LwqError as err:
            raise LwqError(f"{where}{name}: {err}") from err
        if installed is not module:
            block.set_submodule(name, installed)


class PlanApplier:
    """Swaps blocks of `blocks` (a ModuleList, mutated in place) to match a plan."""

    def __init__(
        self,
        blocks: torch.nn.ModuleList,
        backend: Backend,
        keep_on="cpu",
        variants: CalibratedVariants | None = None,
    ) -> None:
        if getattr(backend, "calibrated", False) and variants is None:
            raise LwqError(
                f"quant={backend.name} is calibrated: give the applier its CalibratedVariants"
            )
        self.blocks = blocks
        self.backend = backend
        self.keep_on = torch.device(keep_on)
        self.variants = variants
        self.current = [FULL_PRECISION] * len(blocks)
        self._keys: list[tuple] = [(FULL_PRECISION,)] * len(blocks)
        self._originals: dict[int, torch.nn.Module] = {}
        self.quantize_calls = 0  # quantized variants installed; a sweep's efficiency check

    def apply(self, plan: Plan) -> None:
        for bits in set(plan.bits):
            check_bits(self.backend, bits)
        for i, bits in enumerate(plan.bits):  # in order: sequential calibration relies on it
            key = self.variants.key(i, plan) if self.variants else (bits,)
            if key != self._keys[i]:
                self.blocks[i] = self._variant(i, plan)
                self.current[i], self._keys[i] = bits, key

    def restore(self) -> None:
        """Put every original block back (the model is then exactly as loaded)."""
        self.apply(Plan((FULL_PRECISION,) * len(self.blocks)))

    def original(self, i: int) -> torch.nn.Module:
        """Block i as loaded, wherever it is now."""
        return self._originals.get(i, self.blocks[i])

    def _variant(self, i: int, plan: Plan) -> torch.nn.Module:
        bits = plan.bits[i]
        device = next(self.blocks[i].parameters()).device
        original = self._originals.setdefault(i, self.blocks[i])
        if bits == FULL_PRECISION:
            return original.to(device)
        if self.variants:
            block = self.variants.block(i, plan, self.original, self.blocks, device)
            original.to(self.keep_on)  # only now: the variant may have run through it
        else:
            original.to(self.keep_on)  # in place: the live original leaves the accelerator
            block = copy.deepcopy(original).to(device)
            quantize_block(block, self.backend, bits, where=f"block {i} ")
        _ORIGINALS[block] = original
        self.quantize_calls += 1
        return block
