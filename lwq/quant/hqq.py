"""HQQ (half-quadratic quantization) at 8, 4, 3, 2 or 1 bits, swapping in `HQQLinear`.

Affine per group of `group_size` consecutive input features; HQQ fits each group's zero
point and scale by a half-quadratic proximal solver on a sparsity-promoting loss instead
of taking the min and max (Badri & Shaji 2023, "Half-Quadratic Quantization of Large
Machine Learning Models"). The (groups, group_size) codes are packed along the groups:
8/4/2/1 bits into uint8, 3 bits ten to an int32 (the groups padded to a multiple of 10).
Scale and zero point follow the model's dtype. Modules are swapped one by one because
transformers 5.x's `HqqConfig` path raises NotImplementedError.
"""

from __future__ import annotations

import math

import torch

from lwq.errors import LwqError
from lwq.quant.base import (
    BACKENDS,
    FULL_PRECISION,
    MODEL_DTYPE_BYTES,
    ContractCase,
    LibraryBackend,
    bias_bytes,
    full_precision_bytes,
)

INT32 = 4
CODES_PER_INT32_AT_3_BITS = 10


def _hqq():
    from hqq.core import quantize  # imported on use: only this backend needs it

    return quantize


@BACKENDS.register("hqq")
class HQQ(LibraryBackend):
    """HQQ's own `HQQLinear`, 1 to 8 bits, one scale and zero point per group."""

    name = "hqq"
    supported_bits = frozenset({1, 2, 3, 4, 8, FULL_PRECISION})
    contract = ContractCase(lambda: torch.nn.Linear(100, 64), 4, "must divide the input size 100")

    def __init__(self, group_size: int = 64, eval_dequantized: bool = False) -> None:
        if group_size < 8 or group_size % 8:
            raise LwqError(f"quant.group_size must be a positive multiple of 8, got {group_size}")
        self.group_size = group_size
        self.eval_dequantized = eval_dequantized

    def settings(self) -> dict:
        return {"group_size": self.group_size, "eval_dequantized": self.eval_dequantized}

    def _pack(self, linear: torch.nn.Linear, bits: int) -> torch.nn.Module:
        hqq = _hqq()
        config = hqq.BaseQuantizeConfig(nbits=bits, group_size=self.group_size, axis=1)
        device = str(linear.weight.device)
        return hqq.HQQLinear(
            linear, config, del_orig=True, compute_dtype=linear.weight.dtype, device=device
        )

    def _dequantize(self, packed: torch.nn.Module) -> torch.Tensor:
        return packed.dequantize()

    def _check_shape(self, linear: torch.nn.Linear, bits: int) -> None:
        if linear.in_features % self.group_size:
            raise LwqError(
                f"quant=hqq groups along whole rows: group_size={self.group_size} must divide "
                f"the input size {linear.in_features}; set quant.settings.group_size to a "
                "divisor (a multiple of 8)"
            )
        groups = linear.weight.numel() // self.group_size
        per_byte = 8 // bits
        if bits in (1, 2, 4) and groups % per_byte:
            # HQQ's packers drop the remainder silently (int(len / n) rows)
            raise LwqError(
                f"quant=hqq packs {per_byte} {bits}-bit codes a byte across groups: "
                f"{groups} groups of {self.group_size} is not a multiple of {per_byte}; "
                "pick a smaller group_size"
            )

    def _packed_type(self) -> type:
        return _hqq().HQQLinear

    def _packed_bytes(self, module: torch.nn.Module) -> int:
        meta = module.meta
        model_dtype = meta["scale"].numel() + meta["zero"].numel()
        return module.W_q.nbytes + model_dtype * MODEL_DTYPE_BYTES + bias_bytes(module)

    def weight_bytes(self, module: torch.nn.Module, bits: int) -> int:
        if bits == FULL_PRECISION:
            return full_precision_bytes(module)
        groups = module.weight.numel() // self.group_size
        if bits == 3:
            codes = math.ceil(groups / CODES_PER_INT32_AT_3_BITS) * self.group_size * INT32
        else:
            codes = math.ceil(groups * bits / 8) * self.group_size
        return codes + 2 * groups * MODEL_DTYPE_BYTES + bias_bytes(module)
