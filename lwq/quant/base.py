"""The backend contract and its registry.

A backend does one thing: quantize one linear module to `bits` and hand back the module to
install in its place (the same module for `rtn`, a library module such as bitsandbytes'
`Linear4bit` or `HQQLinear` otherwise), and say how many bytes that module holds.
Choosing which module gets which bits is the plan's job; loading, data and evaluation
live elsewhere.

Sizes follow one convention everywhere: the model is counted as stored in 16 bits, so a
floating tensor that follows the model's dtype (weights left alone, biases, per-group
scales and zero points in the compute dtype) costs 2 bytes an element even when the CPU
computes in float32; a tensor whose dtype the library fixes (packed integers,
bitsandbytes' float32 absmax) costs its own size.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch
from transformers.pytorch_utils import Conv1D

from lwq.errors import LwqError
from lwq.registry import Registry

FULL_PRECISION = 16  # "16 bits" means the block is left as it is (stored as fp16/bf16)
MODEL_DTYPE_BYTES = 2  # a tensor in the model's own dtype, counted as a 16-bit checkpoint


class Backend(Protocol):
    name: str
    supported_bits: frozenset[int]
    # True: quantizes whole blocks on the hidden states entering them (CalibratedBackend);
    # the run then builds its blocks through lwq.quant.variants.CalibratedVariants.
    calibrated: ClassVar[bool]

    def settings(self) -> dict:
        """Everything that changes the result; goes into record keys and caches."""

    def quantize(self, module: torch.nn.Module, bits: int) -> torch.nn.Module:
        """Quantize `module` to `bits`; return the module to install in its place.

        `module` may be consumed (mutated or emptied): callers pass a copy. 16 bits
        returns `module` untouched. A shape the backend cannot handle raises LwqError.
        """

    def held_bytes(self, module: torch.nn.Module) -> int:
        """Bytes the installed module holds (packed weights, scales, zero points, bias)."""

    def weight_bytes(self, module: torch.nn.Module, bits: int) -> int:
        """Bytes the original `module` would hold at `bits`, from shapes (for planning)."""


class CalibratedBackend(Backend, Protocol):
    """A backend that needs the calibration inputs of each block (GPTQ)."""

    inputs: str  # full_precision | sequential: which hidden states a block is calibrated on

    def quantize_block(self, block: torch.nn.Module, bits: int, inputs) -> None:
        """Quantize every linear of `block` (mutated) on `inputs`, the BlockInputs entering it."""

    def for_eval(self, block: torch.nn.Module) -> torch.nn.Module:
        """`block` (a copy of a built variant, mutated) made ready to evaluate."""


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
    """Biases stay in the model's 16-bit storage in every backend."""
    bias = getattr(module, "bias", None)
    return 0 if bias is None else bias.numel() * MODEL_DTYPE_BYTES


def full_precision_bytes(module: torch.nn.Module) -> int:
    """A linear left as loaded: weight and bias in 16 bits."""
    return module.weight.numel() * MODEL_DTYPE_BYTES + bias_bytes(module)


def as_linear(backend: str, module: torch.nn.Module) -> torch.nn.Linear:
    """The module as a plain `nn.Linear`, the one type the libraries take.

    GPT-2's `Conv1D` (weight stored (in, out)) becomes an equivalent `nn.Linear` on the
    transposed weight: the same function, so the library's module can replace it.
    """
    if type(module) is torch.nn.Linear:
        return module
    if isinstance(module, Conv1D):
        in_features, out_features = module.weight.shape
        linear = torch.nn.Linear(in_features, out_features, device="meta")
        linear.weight = torch.nn.Parameter(module.weight.detach().t().contiguous(), False)
        linear.bias = torch.nn.Parameter(module.bias.detach(), False)
        return linear
    raise LwqError(
        f"quant={backend} handles torch.nn.Linear and Conv1D only, not {type(module).__name__}; "
        "use quant=rtn for this model"
    )


def installed_bytes(module: torch.nn.Module, packed_type: type, packed_bytes) -> int:
    """Bytes an installed module holds: a `DequantizedLinear`'s remembered packed count, a
    library module's `packed_bytes(module)`, or a linear left as loaded at 16 bits."""
    if hasattr(module, "held"):  # eval_dequantized: the packed module's count
        return module.held
    if isinstance(module, packed_type):
        return packed_bytes(module)
    return full_precision_bytes(module)


class DequantizedLinear(torch.nn.Linear):
    """A plain linear holding a library's dequantized weights (`eval_dequantized: true`).

    Numerically the packed module's weights (up to the compute dtype) with a fast CPU
    forward; `held` is the byte count of the packed module it was made from.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, held: int) -> None:
        out_features, in_features = weight.shape
        super().__init__(in_features, out_features, bias=bias is not None, device="meta")
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            self.bias = torch.nn.Parameter(bias, requires_grad=False)
        self.held = held


def dequantized(
    weight: torch.Tensor, bias: torch.Tensor | None, held: int, dtype: torch.dtype
) -> DequantizedLinear:
    """The `eval_dequantized` replacement, (out, in) weights in the model's `dtype`."""
    bias = None if bias is None else bias.detach().to(dtype)
    return DequantizedLinear(weight.detach().to(dtype), bias, held)


class LibraryBackend:
    """The steps every library backend (bnb, quanto, hqq) shares around its library call.

    A subclass sets `name` and `eval_dequantized` and gives `_check_shape(linear, bits)`
    (refuse what the library would mishandle), `_pack(linear, bits)` (the library's
    module; may consume `linear`), `_dequantize(packed)` ((out, in) weights),
    `_packed_type()` and `_packed_bytes(packed)` (bytes the packed module holds).
    """

    name: str
    eval_dequantized: bool
    calibrated = False

    @torch.no_grad()
    def quantize(self, module: torch.nn.Module, bits: int) -> torch.nn.Module:
        if bits == FULL_PRECISION:
            return module
        linear = as_linear(self.name, module)
        self._check_shape(linear, bits)
        dtype, bias = linear.weight.dtype, linear.bias  # read first: packing may consume them
        packed = self._pack(linear, bits)
        if not self.eval_dequantized:
            return packed.eval()
        return dequantized(self._dequantize(packed), bias, self.held_bytes(packed), dtype)

    def held_bytes(self, module: torch.nn.Module) -> int:
        return installed_bytes(module, self._packed_type(), self._packed_bytes)
