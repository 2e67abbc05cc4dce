"""bitsandbytes: LLM.int8 at 8 bits, NF4 or FP4 at 4 bits, by swapping in its modules.

8 bits: `Linear8bitLt` holds the weight as int8 with one float32 absmax per output row
(SCB); at run time activation columns above `threshold` stay in 16 bits (LLM.int8,
Dettmers et al. 2022, sec. 3.2). 4 bits: `Linear4bit` holds two 4-bit codes a byte and
one absmax per `blocksize` consecutive weights; with `double_quant` those absmaxes are
themselves 8-bit with a float32 absmax per 256 (QLoRA, Dettmers et al. 2023, sec. 3).
On CPU the 4-bit kernel needs each linear's output size to be a multiple of 32, so other
shapes are refused rather than skipped. Sizes are those of the packed form bitsandbytes
quantizes to (as saved, and as held on CUDA); on CPU the first 4-bit forward repacks it
for its kernel, un-nesting the absmaxes into bfloat16 (4.25 instead of ~4.13 bits a weight
at blocksize 64).
"""

from __future__ import annotations

import math

import torch

from lwq.errors import LwqError
from lwq.modeling.blocks import linear_shape
from lwq.quant.base import (
    BACKENDS,
    FULL_PRECISION,
    ContractCase,
    LibraryBackend,
    bias_bytes,
    full_precision_bytes,
)

CPU_4BIT_MULTIPLE = 32  # `N must be divisible by block_n` in the CPU 4-bit kernel
NESTED_BLOCKSIZE = 256  # double quantization: one float32 absmax per 256 absmaxes
FLOAT32 = 4


def _bnb():
    import bitsandbytes  # imported on use: a 125 MB library that only this backend needs

    return bitsandbytes


@BACKENDS.register("bnb")
class BitsAndBytes(LibraryBackend):
    """bitsandbytes' own modules: 8-bit LLM.int8 and 4-bit nf4/fp4."""

    name = "bnb"
    supported_bits = frozenset({4, 8, FULL_PRECISION})
    contract = ContractCase(lambda: torch.nn.Linear(64, 48), 4, "multiple of 32", sweep_bits=(8, 4))

    def __init__(
        self,
        quant_type: str = "nf4",
        blocksize: int = 64,
        double_quant: bool = True,
        threshold: float = 6.0,
        eval_dequantized: bool = False,
    ) -> None:
        if quant_type not in ("nf4", "fp4"):
            raise LwqError(f"quant.quant_type must be nf4 or fp4, got {quant_type!r}")
        if blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise LwqError(f"quant.blocksize must be a power of two in 32..4096, got {blocksize}")
        self.quant_type = quant_type
        self.blocksize = blocksize
        self.double_quant = double_quant
        self.threshold = threshold
        self.eval_dequantized = eval_dequantized

    def settings(self) -> dict:
        return {
            "quant_type": self.quant_type,
            "blocksize": self.blocksize,
            "double_quant": self.double_quant,
            "threshold": self.threshold,
            "eval_dequantized": self.eval_dequantized,
        }

    def _pack(self, linear: torch.nn.Linear, bits: int) -> torch.nn.Module:
        return self._int8(linear) if bits == 8 else self._4bit(linear)

    def _check_shape(self, linear: torch.nn.Linear, bits: int) -> None:
        if bits == 4 and linear.out_features % CPU_4BIT_MULTIPLE:
            raise LwqError(
                f"quant=bnb at 4 bits needs an output size that is a multiple of "
                f"{CPU_4BIT_MULTIPLE} (the CPU kernel's block), this linear has "
                f"{linear.out_features}; use quant=hqq or quant=rtn for this model"
            )

    def _int8(self, linear: torch.nn.Linear) -> torch.nn.Module:
        bnb = _bnb()
        out = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            has_fp16_weights=False,
            threshold=self.threshold,
            device="meta",
        )
        out.weight = bnb.nn.Int8Params(
            linear.weight.data.clone(), requires_grad=False, has_fp16_weights=False
        )
        if linear.bias is not None:
            out.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        return out.to(linear.weight.device)  # the move quantizes (weight -> int8 + SCB)

    def _4bit(self, linear: torch.nn.Linear) -> torch.nn.Module:
        bnb = _bnb()
        out = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=linear.weight.dtype,
            quant_type=self.quant_type,
            compress_statistics=self.double_quant,
            device="meta",
        )
        out.weight = bnb.nn.Params4bit(
            linear.weight.data.clone(),
            requires_grad=False,
            quant_type=self.quant_type,
            blocksize=self.blocksize,
            compress_statistics=self.double_quant,
        )
        if linear.bias is not None:
            out.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        return out.to(linear.weight.device)  # the move quantizes (weight -> packed codes)

    def _dequantize(self, packed: torch.nn.Module) -> torch.Tensor:
        """(out, in) float32 weights of a Linear8bitLt or Linear4bit."""
        weight = packed.weight
        if hasattr(weight, "quant_state"):
            return _bnb().functional.dequantize_4bit(weight.data, weight.quant_state).float()
        return weight.data.float() * (weight.SCB.float()[:, None] / 127)  # absmax / 127 a row

    def _packed_type(self) -> type | tuple[type, ...]:
        return (_bnb().nn.Linear8bitLt, _bnb().nn.Linear4bit)

    def _packed_bytes(self, module: torch.nn.Module) -> int:
        weight = module.weight
        state = getattr(weight, "quant_state", None)
        held = weight.data.nbytes + bias_bytes(module)
        if state is None:  # int8: the first forward moves SCB from the weight to the module
            scb = weight.SCB if weight.SCB is not None else module.state.SCB
            return held + scb.nbytes
        held += state.absmax.nbytes + state.code.nbytes
        if state.nested:
            held += state.offset.nbytes + state.state2.absmax.nbytes + state.state2.code.nbytes
        return held

    def weight_bytes(self, module: torch.nn.Module, bits: int) -> int:
        if bits == FULL_PRECISION:
            return full_precision_bytes(module)
        n = module.weight.numel()
        if bits == 8:  # int8 codes and a float32 absmax (SCB) per output row
            return n + linear_shape(module)[0] * FLOAT32 + bias_bytes(module)
        blocks = math.ceil(n / self.blocksize)
        codebook = 16 * FLOAT32  # the nf4/fp4 values
        if self.double_quant:  # uint8 absmaxes, their float32 offset, absmaxes and 256-code book
            nested = math.ceil(blocks / NESTED_BLOCKSIZE)
            stats = blocks + FLOAT32 + nested * FLOAT32 + NESTED_BLOCKSIZE * FLOAT32
        else:
            stats = blocks * FLOAT32
        return math.ceil(n / 2) + stats + codebook + bias_bytes(module)
