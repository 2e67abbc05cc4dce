"""Quantizer backends: each quantizes one linear layer to `bits` and returns what to install."""

from lwq.quant import bnb, gguf_types, gptq, hqq, quanto, rtn, slider  # noqa: F401  (registers them)
from lwq.quant.base import BACKENDS, Backend, check_bits, make_backend

__all__ = ["BACKENDS", "Backend", "check_bits", "make_backend"]
