"""The backend contract and its registry.

A backend does one thing: quantize one linear module to `bits` in place and say how many
bytes the quantized form holds (weights, scales, zero points, bias). Choosing which
module gets which bits is the plan's job; loading, data and evaluation live elsewhere.
"""

from __future__ import annotations

from typing import Protocol

import torch

from lwq.errors import LwqError
from lwq.registry import Registry

FULL_PRECISION = 16  # "16 bits" means the block is left as it is (stored as fp16/bf16)


class Backend(Protocol):
    name: str
    supported_bits: frozenset[int]

    def settings(self) -> dict:
        """Everything that changes the result; goes into record keys and caches."""

    def quantize(self, module: torch.nn.Module, bits: int) -> int:
        """Quantize `module` in place to `bits`; return the bytes it now holds."""

    def weight_bytes(self, module: torch.nn.Module, bits: int) -> int:
        """Bytes `module` would hold at `bits`, without touching it (for planning)."""


BACKENDS: Registry[type] = Registry("quant backend")


def make_backend(name: str, **settings) -> Backend:
    return BACKENDS.get(name)(**settings)


def check_bits(backend: Backend, bits: int) -> None:
    """Refuse at plan time a bit-width the backend cannot do, naming those that can."""
    if bits in backend.supported_bits:
        return
    able = [n for n in BACKENDS.names() if bits in BACKENDS.get(n).supported_bits]
    others = f"; backends that can: {', '.join(able)}" if able else ""
    raise LwqError(
        f"quant={backend.name} cannot do {bits} bits (it does "
        f"{', '.join(map(str, sorted(backend.supported_bits)))}){others}"
    )


def bias_bytes(module: torch.nn.Module) -> int:
    """Biases stay in 16-bit storage in every backend."""
    bias = getattr(module, "bias", None)
    return 0 if bias is None else bias.numel() * 2
