"""Group-wise round-to-nearest (RTN) weight quantization in plain torch: the reference backend.

Asymmetric min-max per group of `group_size` consecutive input features, in one of two
ranges (`range`):
- `include_zero` (default, as GPTQ and most integer formats): the range is widened to
  hold 0 and the offset is an integer zero point: scale = (max - min) / (2^bits - 1),
  zero = round(-min / scale), q = clamp(round(w / scale) + zero, 0, 2^bits - 1),
  w_hat = (q - zero) * scale. Per group: a 16-bit scale and a `bits`-wide zero.
- `minmax` (as GGUF's Q4_1/Q5_1): the group's own min and max, the offset a float:
  q = clamp(round((w - min) / scale), 0, 2^bits - 1), w_hat = q * scale + min.
  Per group: a 16-bit scale and a 16-bit minimum.
A row whose width is not a multiple of `group_size` ends in one shorter group.
The module keeps the dequantized weight (exact for weight-only quantization up to the
compute dtype) and is installed as it is; no packed tensors exist, so the bytes it holds
are those of the packed form by definition: `bits` per weight, plus a 16-bit scale and a
`bits`-wide zero point per group (the bit-width is remembered on the module).
"""

from __future__ import annotations

import math

import torch

from lwq.errors import LwqError
from lwq.modeling.blocks import input_dim
from lwq.quant.base import (
    BACKENDS,
    FULL_PRECISION,
    LINEAR,
    ContractCase,
    bias_bytes,
    full_precision_bytes,
)

BITS_ATTR = "lwq_rtn_bits"  # set on a quantized module: the width its weights are on


RANGES = ("include_zero", "minmax")


def quantize_groups(w: torch.Tensor, bits: int, range_: str = "include_zero") -> torch.Tensor:
    """Quantize-dequantize (..., G) groups of the last dim, each with its own scale/offset."""
    levels = 2**bits - 1
    lo, hi = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    if range_ == "minmax":
        scale = ((hi - lo) / levels).clamp(min=torch.finfo(torch.float32).tiny)
        return torch.clamp(torch.round((w - lo) / scale), 0, levels) * scale + lo
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)  # keep 0 representable
    scale = ((hi - lo) / levels).clamp(min=torch.finfo(torch.float32).tiny)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(w / scale) + zero, 0, levels)
    return (q - zero) * scale


def quantize_rows(
    w: torch.Tensor, bits: int, group_size: int, range_: str = "include_zero"
) -> torch.Tensor:
    """Quantize-dequantize a (rows, in) matrix group-wise along `in` (ragged last group)."""
    rows, width = w.shape
    full = (width // group_size) * group_size
    out = torch.empty_like(w)
    if full:
        grouped = w[:, :full].reshape(rows, -1, group_size)  # (rows, groups, G)
        out[:, :full] = quantize_groups(grouped, bits, range_).reshape(rows, full)
    if full < width:
        out[:, full:] = quantize_groups(w[:, full:], bits, range_)
    return out


@BACKENDS.register("rtn")
class RTN:
    """Round-to-nearest, 2 to 8 bits, any group size; identical maths on CPU and CUDA."""

    name = "rtn"
    supported_bits = frozenset({2, 3, 4, 5, 6, 7, 8, FULL_PRECISION})
    unit = LINEAR
    contract = ContractCase(lambda: torch.nn.Embedding(16, 64), 4, "neither nn.Linear nor Conv1D")

    def __init__(self, group_size: int = 128, range: str = "include_zero") -> None:  # noqa: A002 - the config key
        if group_size < 0:
            raise LwqError(
                f"quant.settings.group_size must be 0 (per channel) or positive, got {group_size}"
            )
        if range not in RANGES:
            raise LwqError(f"quant.range={range} is not a range; use one of {', '.join(RANGES)}")
        self.group_size = group_size
        self.range = range

    def settings(self) -> dict:
        # the default range is left out, so keys made before it existed stay the same
        extra = {} if self.range == "include_zero" else {"range": self.range}
        return {"group_size": self.group_size, **extra}

    @torch.no_grad()
    def quantize(self, module: torch.nn.Module, bits: int, inputs=None) -> torch.nn.Module:
        """Round `module`'s weights in place; returns `module` itself."""
        if bits == FULL_PRECISION:
            return module
        dim = input_dim(module)
        w = module.weight.data.float()
        w = w if dim == 1 else w.t()  # (out, in)
        q = quantize_rows(w, bits, self.group_size or w.shape[1], self.range)
        q = q if dim == 1 else q.t()
        module.weight.data.copy_(q.to(module.weight.dtype))
        setattr(module, BITS_ATTR, bits)
        return module

    def held_bytes(self, module: torch.nn.Module) -> int:
        return self.weight_bytes(module, getattr(module, BITS_ATTR, FULL_PRECISION))

    def weight_bytes(self, module: torch.nn.Module, bits: int) -> int:
        weight = module.weight
        if bits == FULL_PRECISION:
            return full_precision_bytes(module)
        width = weight.shape[input_dim(module)]
        rows = weight.numel() // width
        groups = rows * math.ceil(width / (self.group_size or width))
        offset_bits = 16 if self.range == "minmax" else bits  # float16 minimum or integer zero
        payload_bits = weight.numel() * bits + groups * (16 + offset_bits)
        return math.ceil(payload_bits / 8) + bias_bytes(module)
