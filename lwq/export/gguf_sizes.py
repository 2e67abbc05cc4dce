"""The bytes a GGUF file will hold for a plan, before it is written (`allocate.format=gguf`).

llama-quantize gives a tensor the type its block asks for only when the tensor's rows are
a multiple of that type's block (256 weights for the K-quants); otherwise it falls back to
a type with 32-wide blocks, and to F16 when even that does not divide the rows
(`tensor_type_fallback` in src/llama-quant.cpp of the llama.cpp release lwq builds,
lwq.llama_cpp.VERSION). SmolLM2's 576-wide inputs send six of each block's seven linears
from q2_k to q4_0: a "2-bit" block holds 4.3 bits per weight. `GgufFileSizes` applies the
same rule to the model's shapes, so an allocator planning with it plans in the bits the
file will have; `gguf_file.read_back` reports the file's own, and a test checks they agree.

Counted as the file stores them: block linears' weights at their (fallen-back) type;
2-D tensors outside them (token embedding, an untied output matrix) at `export.embeddings`;
every 1-D tensor (norms, biases) at F32.
"""

from __future__ import annotations

import math

from lwq.errors import LwqError
from lwq.modeling.blocks import input_dim
from lwq.quant.base import FULL_PRECISION
from lwq.quant.gguf_types import FALLBACK, stored_type, tensor_bytes

__all__ = ["FALLBACK", "GgufFileSizes", "stored_type"]  # the rule lives with the types
F32_BYTES = 4


class GgufFileSizes:
    """A size rule with a backend's `weight_bytes`: a linear's bytes in the GGUF file at a
    width, under `types` (bits -> llama.cpp type, `export.types`), fallbacks included."""

    name = "gguf file"

    def __init__(self, types: dict[int, str], embeddings: str) -> None:
        self.types = types
        self.embeddings = embeddings

    def type_at(self, module, bits: int) -> str:
        if bits not in self.types:
            raise LwqError(f"export.types maps no type to {bits} bits; add export.types.{bits}")
        return stored_type(self.types[bits], module.weight.shape[input_dim(module)])

    def weight_bytes(self, module, bits: int) -> int:
        """The weight matrix only: its bias is a 1-D F32 tensor (`fixed_bytes`)."""
        width = module.weight.shape[input_dim(module)]
        rows = module.weight.numel() // width
        name = "f16" if bits == FULL_PRECISION else self.type_at(module, bits)
        return tensor_bytes(name, rows, width)

    def fixed_bytes(self, shapes: tuple[tuple[int, ...], ...]) -> int:
        """Every tensor no plan changes (`shapes`): 2-D at the embeddings' type, else F32."""
        total = 0
        for shape in shapes:
            if len(shape) == 2:
                total += tensor_bytes(stored_type(self.embeddings, shape[1]), shape[0], shape[1])
            else:
                total += F32_BYTES * math.prod(shape)
        return total
