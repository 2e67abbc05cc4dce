"""llama.cpp's own quantization types (Q2_K ... Q8_0, Q4_0/Q4_1, ...) as a backend, so a
sweep measures exactly the weights a GGUF export (`run.py export`) will hold.

Each linear's rows go through ggml's `ggml_quantize_chunk`, called in the libggml-base
that `make llama-cpp` builds (ctypes; no imatrix, as `llama-quantize` without one), and
come back through gguf-py's dequantizer. The bytes are the format's own: `type_size`
bytes per block of `block_size` weights (Q2_K: 84 bytes per 256 weights = 2.625 bits).
Types are chosen per bit-width (`types`, as `export.types`). A row whose width is not a
multiple of the type's block (256 for the K-quants) is refused, naming a type that fits,
since llama.cpp would silently quantize that tensor to another type; or, with
`fallback: llama_cpp`, quantized at that other type exactly as llama-quantize does
(`stored_type`: q2_k/q3_k -> q4_0 on SmolLM2's 576-wide rows), so a sweep or a sensitivity
table measures the weights and bytes the GGUF file will hold.
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np
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

TYPE_ATTR = "lwq_gguf_type"  # set on a quantized module: the llama.cpp type it holds

# llama.cpp type per bit-width: K-quants at 2..6 bits (super-blocks of 256 with 6-bit or
# 8-bit sub-block scales), Q8_0 at 8, F16 for a block the plan leaves unquantized.
DEFAULT_TYPES = {2: "q2_k", 3: "q3_k", 4: "q4_k", 5: "q5_k", 6: "q6_k", 8: "q8_0", 16: "f16"}


def ggml_type(name: str):
    """gguf-py's enum member for llama.cpp type `name` (q2_k, q4_0, f16, ...)."""
    from gguf.constants import GGMLQuantizationType

    try:
        return GGMLQuantizationType[name.upper()]
    except KeyError:
        raise LwqError(f"{name!r} is not a llama.cpp type; e.g. q2_k, q4_k, q4_0, q8_0") from None


def read_types(given: dict | None, key: str) -> dict[int, str]:
    """bits -> llama.cpp type: DEFAULT_TYPES with `given` (a config node) over them; `key`
    names the node in errors. Keys are the widths lwq maps, names known to gguf-py."""
    types = dict(DEFAULT_TYPES)
    widths = ", ".join(map(str, sorted(DEFAULT_TYPES)))
    for bits, name in (given or {}).items():
        if not str(bits).isdigit() or int(bits) not in DEFAULT_TYPES:
            raise LwqError(f"{key}.{bits}: the keys are bit-widths ({widths})")
        if not isinstance(name, str) or not name:
            raise LwqError(f"{key}.{bits}={name!r}; give a llama.cpp type, e.g. q4_k")
        types[int(bits)] = name.lower()
    for name in types.values():
        ggml_type(name)
    return types


def block_shape(name: str) -> tuple[int, int]:
    """(weights per block, bytes per block) of llama.cpp type `name`."""
    from gguf.constants import GGML_QUANT_SIZES

    return GGML_QUANT_SIZES[ggml_type(name)]


def tensor_bytes(name: str, rows: int, width: int) -> int:
    """Bytes of a (rows, width) tensor at llama.cpp type `name` (rows of whole blocks)."""
    block, size = block_shape(name)
    return rows * (width // block) * size


@cache
def _ggml() -> ctypes.CDLL:
    from lwq.llama_cpp import locate

    lib = ctypes.CDLL(str(locate().tool("libggml-base.so")))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,  # type
        ctypes.c_void_p,  # src (float32 rows)
        ctypes.c_void_p,  # dst
        ctypes.c_int64,  # start
        ctypes.c_int64,  # nrows
        ctypes.c_int64,  # n_per_row
        ctypes.c_void_p,  # imatrix (none)
    ]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return lib


def quantize_rows(weight: np.ndarray, name: str) -> np.ndarray:
    """(rows, width) float32 weights through llama.cpp type `name` and back."""
    from gguf.quants import dequantize

    qtype = ggml_type(name)
    lib = _ggml()
    if lib.ggml_quantize_requires_imatrix(int(qtype)):
        raise LwqError(f"{name} needs an importance matrix (lwq makes none); pick a K-quant")
    rows, width = weight.shape
    block, size = block_shape(name)
    src = np.ascontiguousarray(weight, dtype=np.float32)
    packed = np.empty((rows, width // block * size), dtype=np.uint8)
    written = lib.ggml_quantize_chunk(
        int(qtype), src.ctypes.data, packed.ctypes.data, 0, rows, width, None
    )
    if written != packed.nbytes:
        raise LwqError(f"ggml wrote {written} bytes of {name}, expected {packed.nbytes}")
    return dequantize(packed, qtype).reshape(rows, width)


# llama.cpp's fallback type when rows are not a multiple of the wanted type's block
FALLBACK = {
    **dict.fromkeys(("iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs"), "iq4_nl"),
    **dict.fromkeys(("iq3_s", "iq4_xs"), "iq4_nl"),
    **dict.fromkeys(("q2_0", "q2_k", "q3_k", "tq1_0", "tq2_0"), "q4_0"),
    "q4_k": "q5_0",
    "q5_k": "q5_1",
    "q6_k": "q8_0",
}
FALLBACK_MODES = ("refuse", "llama_cpp")
SMALL_BLOCK = 32  # a type with blocks this small or smaller has nothing to fall back to


def stored_type(wanted: str, width: int) -> str:
    """The type llama-quantize stores a tensor of `width`-wide rows at when `wanted`."""
    block, _ = block_shape(wanted)
    if width % block == 0:
        return wanted
    if wanted in FALLBACK:
        fallback = FALLBACK[wanted]
    elif block <= SMALL_BLOCK:
        fallback = wanted
    else:
        raise LwqError(f"llama.cpp has no fallback for {wanted} on {width}-wide rows")
    return fallback if width % block_shape(fallback)[0] == 0 else "f16"


@BACKENDS.register("gguf")
class GgufTypes:
    """llama.cpp's types per bit-width, quantized by ggml itself (needs `make llama-cpp`)."""

    name = "gguf"
    supported_bits = frozenset(DEFAULT_TYPES)  # 2, 3, 4, 5, 6, 8 and 16
    unit = LINEAR
    # the K-quants pack rows of 256: checked on a 256-wide model; the sweep on ref-tiny
    # (128 wide) maps its widths to 32-wide types
    contract = ContractCase(
        lambda: torch.nn.Linear(200, 64),
        4,
        "q4_k packs rows in blocks of 256",
        width=256,
        sweep_bits=(8, 4),
        sweep_settings={"types": {"4": "q4_0", "8": "q8_0"}},
        snr_8_bits_db=40.0,  # q8_0 on the random 256-wide model: 45.6 dB measured
    )

    def __init__(self, types: dict | None = None, fallback: str = "refuse") -> None:
        self.types = read_types(types, "quant.settings.types")  # unknown names fail here
        if fallback not in FALLBACK_MODES:
            raise LwqError(
                f"quant.settings.fallback must be one of {', '.join(FALLBACK_MODES)}, "
                f"got {fallback!r}"
            )
        self.fallback = fallback

    def settings(self) -> dict:
        # the default is left out, so keys made before the setting existed stay valid
        extra = {} if self.fallback == "refuse" else {"fallback": self.fallback}
        return {"types": {str(b): t for b, t in sorted(self.types.items())}, **extra}

    @torch.no_grad()
    def quantize(self, module: torch.nn.Module, bits: int, inputs=None) -> torch.nn.Module:
        """Round `module`'s weights through its llama.cpp type in place; returns it."""
        name = self.types[bits]
        if bits == FULL_PRECISION or name == "f16":
            return module
        name = self._stored(module, name, bits)
        if name == "f16":
            return module
        dim = input_dim(module)
        w = module.weight.data.float()
        w = w if dim == 1 else w.t()  # (out, in): ggml quantizes along the input
        q = torch.from_numpy(quantize_rows(w.cpu().numpy(), name)).to(w.device)
        q = q if dim == 1 else q.t()
        module.weight.data.copy_(q.to(module.weight.dtype))
        setattr(module, TYPE_ATTR, name)
        return module

    def held_bytes(self, module: torch.nn.Module) -> int:
        name = getattr(module, TYPE_ATTR, None)
        return full_precision_bytes(module) if name is None else self._bytes(module, name)

    def weight_bytes(self, module: torch.nn.Module, bits: int) -> int:
        name = self.types[bits]
        if bits == FULL_PRECISION or name == "f16":
            return full_precision_bytes(module)
        name = self._stored(module, name, bits)
        if name == "f16":
            return full_precision_bytes(module)
        return self._bytes(module, name)

    def _stored(self, module: torch.nn.Module, name: str, bits: int) -> str:
        """The type `module` is quantized at: `name`, or llama.cpp's fallback for its width."""
        if self.fallback == "llama_cpp":
            return stored_type(name, module.weight.shape[input_dim(module)])
        self._check_width(module, name, bits)
        return name

    @staticmethod
    def _bytes(module: torch.nn.Module, name: str) -> int:
        width = module.weight.shape[input_dim(module)]
        return tensor_bytes(name, module.weight.numel() // width, width) + bias_bytes(module)

    @staticmethod
    def _check_width(module: torch.nn.Module, name: str, bits: int) -> None:
        block, _ = block_shape(name)
        width = module.weight.shape[input_dim(module)]
        if width % block:
            raise LwqError(
                f"quant=gguf: {name} packs rows in blocks of {block} and this model has "
                f"{width}-wide inputs (llama.cpp would quantize them to another type); map "
                f"{bits} bits to a type with 32-wide blocks, e.g. quant.settings.types.{bits}="
                "q4_0 (no such type is below 4 bits), or add +quant.settings.fallback=llama_cpp "
                "to quantize as llama.cpp will"
            )
