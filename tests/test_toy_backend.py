"""A per-linear backend defined here, and nowhere else, is a full lwq backend: registered,
it passes the shared contract checks and runs a sweep through `quant=toy`.

The toy rounds each weight row to `bits` levels between its own min and max (asymmetric,
one float16 scale and offset per row): simple enough to count its bytes by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from lwq.config import add_option
from lwq.errors import LwqError
from lwq.quant import BACKENDS
from lwq.quant.base import FULL_PRECISION, LINEAR, ContractCase, bias_bytes, full_precision_bytes
from tests.contract import CHECKS, check_a_two_point_sweep_records_true_sizes

BITS_ATTR = "toy_bits"


class ToyRows:
    name = "toy"
    unit = LINEAR
    supported_bits = frozenset({2, 3, 4, 8, FULL_PRECISION})
    contract = ContractCase(lambda: torch.nn.Embedding(16, 64), 4, "toy takes nn.Linear only")

    def __init__(self, clip: float = 1.0) -> None:
        self.clip = clip

    def settings(self) -> dict:
        return {"clip": self.clip}

    @torch.no_grad()
    def quantize(self, module, bits, inputs=None):
        if bits == FULL_PRECISION:
            return module
        if type(module) is not torch.nn.Linear:
            raise LwqError(f"toy takes nn.Linear only, not {type(module).__name__}")
        w = module.weight.float()
        low, high = w.amin(1, keepdim=True) * self.clip, w.amax(1, keepdim=True) * self.clip
        scale = (high - low).clamp(min=1e-8) / (2**bits - 1)
        codes = torch.round((w.clamp(low, high) - low) / scale)
        module.weight.copy_((codes * scale + low).to(module.weight.dtype))
        setattr(module, BITS_ATTR, bits)
        return module

    def held_bytes(self, module) -> int:
        return self.weight_bytes(module, getattr(module, BITS_ATTR, FULL_PRECISION))

    def weight_bytes(self, module, bits: int) -> int:
        if bits == FULL_PRECISION:
            return full_precision_bytes(module)
        rows, width = module.weight.shape
        return math.ceil(rows * width * bits / 8) + rows * 2 * 2 + bias_bytes(module)


@pytest.fixture
def toy():
    """`toy` registered as a backend and as `quant=toy` for the run's config, then removed."""
    BACKENDS.register("toy")(ToyRows)
    add_option("quant", "toy", {"name": "toy", "settings": {}})
    try:
        yield ToyRows()
    finally:
        BACKENDS.unregister("toy")


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_a_backend_defined_in_a_test_meets_the_contract(toy, check):
    check(toy)


@pytest.mark.slow
def test_a_backend_defined_in_a_test_runs_a_sweep(toy, tmp_path):
    check_a_two_point_sweep_records_true_sizes("toy", tmp_path)


def test_the_contract_checks_fail_on_a_backend_that_misreports_its_bytes(toy):
    """The shared checks can fail: a toy that claims one byte less than it holds."""

    class Misreporting(ToyRows):
        def held_bytes(self, module):
            return super().held_bytes(module) + 1

    with pytest.raises(AssertionError):
        CHECKS[0](Misreporting())
