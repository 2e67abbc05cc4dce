"""Quantizer backends: each quantizes one linear layer to `bits` and returns what to install."""

from lwq.quant import bnb, gptq, hqq, quanto, rtn  # noqa: F401  (registers the backends)
from lwq.quant.base import BACKENDS, Backend, check_bits, make_backend

__all__ = ["BACKENDS", "Backend", "check_bits", "make_backend"]
