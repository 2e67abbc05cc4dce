"""The backend contract and its registry.

A backend quantizes one *unit* of the model to a bit-width and says how many bytes the
result holds. Its `unit` says what that unit is, and so what the engine
(lwq.quant.engine) hands it and keeps:

- `"linear"` (rtn, gguf, bnb, quanto, hqq): one linear module, quantized on its own; the
  engine copies a block and quantizes each linear in it. Nothing is kept between plans.
- `"block"` (gptq): one decoder block, quantized on the hidden states entering it
  (`inputs`, a BlockInputs). Built blocks are kept (and stored on disk) through
  `state`/`restore`, and made ready to evaluate by `for_eval`.
- a `Window` (SliderQuant): blocks calibrated together; `reach(i, n)` names the blocks
  whose bits block i's result depends on. `quantize` gets every block and the plan's
  bits and returns every block.

Choosing which unit gets which bits is the plan's job; loading, data and evaluation live
elsewhere.

Sizes follow one convention everywhere: the model is counted as stored in 16 bits, so a
floating tensor that follows the model's dtype (weights left alone, biases, per-group
scales and zero points in the compute dtype) costs 2 bytes an element even when the CPU
computes in float32; a tensor whose dtype the library fixes (packed integers,
bitsandbytes' float32 absmax) costs its own size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers.pytorch_utils import Conv1D

from lwq.errors import LwqError
from lwq.plan import FULL_PRECISION
from lwq.registry import Registry

MODEL_DTYPE_BYTES = 2  # a tensor in the model's own dtype, counted as a 16-bit checkpoint
LINEAR = "linear"
BLOCK = "block"


class Window:
    """The unit of a backend that calibrates several blocks together.

    `reach(i, n)` is every block (of `n`) whose bits change block i's result; the engine
    keys block i's variant by the plan's bits there, so a cached variant is reused exactly
    when nothing it depends on changed.
    """

    def reach(self, i: int, n: int) -> Sequence[int]:
        raise NotImplementedError


@dataclass(frozen=True)
class ContractCase:
    """What the shared contract tests (tests/contract.py) need to know to check a backend;
    every backend declares one (`contract`), so a new backend is checked without editing
    the shared tests.

    `width`: hidden width of the model the checks run on (128 = ref-tiny's blocks; any
    other a random shrunk Llama that wide, e.g. 256 for llama.cpp's K-quants).
    `unhandled`: a module the backend refuses at `unhandled_bits`, and a phrase of the error.
    `sweep_bits`/`sweep_settings`: a two-point sweep on ref-tiny (high, low bits; settings
    over the conf file's). `settings`: over the conf file's for the block checks (a short
    training, say). `snr_8_bits_db`: the least output SNR at 8 bits on that model.
    """

    unhandled: Callable[[], torch.nn.Module]
    unhandled_bits: int
    unhandled_phrase: str
    width: int = 128
    sweep_bits: tuple[int, int] = (4, 2)
    sweep_settings: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # over the conf file's, for the block checks
    snr_8_bits_db: float = 50.0  # measured 55.9 (bnb LLM.int8) to 65.0 dB (hqq) on ref-tiny


class Backend(Protocol):
    name: str
    unit: str | Window  # LINEAR, BLOCK or a Window (see the module docstring)
    supported_bits: frozenset[int]
    contract: ContractCase  # what the shared contract tests need (tests/contract.py)

    def settings(self) -> dict:
        """Everything that changes the result; goes into record keys and caches."""

    def quantize(self, unit, bits, inputs=None):
        """Quantize `unit` to `bits`; return what to install (or keep) in its place.

        linear: (a linear module, int bits, None) -> the module to install.
        block: (a block, int bits, the BlockInputs entering it) -> the block, packed; a
        `built=` keyword gives (bits, packed block) pairs built before on the same inputs
        that the backend may take parts of that would come out the same.
        Window: (every block, the plan's bits, the BlockInputs entering block 0) ->
        every block, packed.
        The unit may be consumed (mutated or emptied): callers pass copies. 16 bits
        leaves a unit untouched. A shape the backend cannot handle raises LwqError.
        """

    def held_bytes(self, module: torch.nn.Module) -> int:
        """Bytes the installed module holds (packed weights, scales, zero points, bias)."""

    def weight_bytes(self, module: torch.nn.Module, bits: int) -> int:
        """Bytes the original `module` would hold at `bits`, from shapes (for planning)."""


class KeptBackend(Backend, Protocol):
    """A backend whose unit is a block or a window: its results are kept and stored."""

    def state(self, block: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The tensors that make up a built block (what the disk store saves)."""

    def restore(
        self, original: torch.nn.Module, bits: int, state: dict[str, torch.Tensor]
    ) -> torch.nn.Module:
        """The built block again, from a copy of the block as loaded and its `state`."""

    def for_eval(self, block: torch.nn.Module) -> torch.nn.Module:
        """`block` (a copy of a kept block, mutated) made ready to evaluate."""


def uses_calibration(backend: Backend) -> bool:
    """Whether the backend's result depends on the calibration set (its identity says so)."""
    return backend.unit != LINEAR


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
    unit = LINEAR

    @torch.no_grad()
    def quantize(self, module: torch.nn.Module, bits: int, inputs=None) -> torch.nn.Module:
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
