"""optimum-quanto: int8, int4 and int2 weights through its `QLinear`.

int8 is symmetric with one scale per output row (quanto's absmax optimizer); int4 and
int2 are affine (a scale and a shift) per group of `group_size` input features (quanto's
max optimizer), the (groups, group_size) codes packed along the groups into uint8. quanto groups
along whole rows only, so `group_size` must divide each linear's input size. Scales and
shifts follow the model's dtype. The module also keeps two scalar activation-scale
buffers (unused for weight-only quantization); they are counted, since they are held.
"""

from __future__ import annotations

import math

import torch

from lwq.errors import LwqError
from lwq.modeling.blocks import linear_shape
from lwq.quant.base import (
    BACKENDS,
    FULL_PRECISION,
    MODEL_DTYPE_BYTES,
    ContractCase,
    LibraryBackend,
    bias_bytes,
    full_precision_bytes,
)

ACTIVATION_SCALES = 2  # QLinear's input_scale and output_scale buffers (scalars)


def _quanto():
    import optimum.quanto  # imported on use: only this backend needs it

    return optimum.quanto


def _qtype(bits: int):
    quanto = _quanto()
    return {8: quanto.qint8, 4: quanto.qint4, 2: quanto.qint2}[bits]


@BACKENDS.register("quanto")
class Quanto(LibraryBackend):
    """optimum-quanto weight-only QLinear, int8 (per row) or int4/int2 (per group)."""

    name = "quanto"
    supported_bits = frozenset({2, 4, 8, FULL_PRECISION})
    contract = ContractCase(lambda: torch.nn.Linear(200, 64), 4, "must divide the input size 200")

    def __init__(self, group_size: int = 128, eval_dequantized: bool = False) -> None:
        if group_size < 1:
            raise LwqError(f"quant.group_size must be a positive integer, got {group_size}")
        self.group_size = group_size
        self.eval_dequantized = eval_dequantized

    def settings(self) -> dict:
        return {"group_size": self.group_size, "eval_dequantized": self.eval_dequantized}

    def _pack(self, linear: torch.nn.Linear, bits: int) -> torch.nn.Module:
        packed = _quanto().nn.QLinear.from_module(linear, weights=_qtype(bits))
        if bits < 8:  # quanto picks its own group size at construction; ours replaces it
            packed.weight_group_size = self.group_size
        packed.freeze()  # quantizes: weight -> codes, scale (and shift)
        return packed

    def _dequantize(self, packed: torch.nn.Module) -> torch.Tensor:
        return packed.weight.dequantize()

    def _check_shape(self, linear: torch.nn.Linear, bits: int) -> None:
        if bits < 8 and linear.in_features % self.group_size:
            raise LwqError(
                f"quant=quanto groups along whole rows: group_size={self.group_size} must "
                f"divide the input size {linear.in_features}; set quant.settings.group_size "
                "to a divisor"
            )

    def _packed_type(self) -> type:
        return _quanto().nn.QLinear

    def _packed_bytes(self, module: torch.nn.Module) -> int:
        weight = module.weight
        codes = weight._data
        codes = getattr(codes, "_data", codes)  # int4/int2: a packed uint8 tensor inside
        model_dtype = weight._scale.numel() + getattr(weight, "_shift", weight._scale[:0]).numel()
        model_dtype += module.input_scale.numel() + module.output_scale.numel()
        return codes.nbytes + model_dtype * MODEL_DTYPE_BYTES + bias_bytes(module)

    def weight_bytes(self, module: torch.nn.Module, bits: int) -> int:
        if bits == FULL_PRECISION:
            return full_precision_bytes(module)
        out_features, in_features = linear_shape(module)
        if bits == 8:
            codes, params = module.weight.numel(), out_features  # one scale a row
        else:
            groups = out_features * (in_features // self.group_size)  # (groups, group_size)
            codes = math.ceil(groups / (8 // bits)) * self.group_size  # packed along groups
            params = 2 * groups  # a scale and a shift per group
        params += ACTIVATION_SCALES
        return codes + params * MODEL_DTYPE_BYTES + bias_bytes(module)
