"""Quantizer backends: each quantizes one linear layer to `bits`, in place."""

from lwq.quant import rtn  # noqa: F401  (registers the backend)
from lwq.quant.base import BACKENDS, Backend, check_bits, make_backend

__all__ = ["BACKENDS", "Backend", "check_bits", "make_backend"]
