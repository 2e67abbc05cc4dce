"""The backend contract (tests/contract.py), checked on every registered backend, and
what only some backends have (rtn's packing, the libraries' own modules and settings).

Each backend declares the model its checks run on and its own cases (`contract`,
lwq.quant.base.ContractCase), so a new backend is checked here without editing this file.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers.pytorch_utils import Conv1D

from lwq.errors import LwqError
from lwq.modeling.blocks import block_linears
from lwq.modeling.capture import BlockInputs
from lwq.quant import BACKENDS, check_bits
from lwq.quant.base import FULL_PRECISION
from tests.contract import (
    CHECKS,
    check_a_two_point_sweep_records_true_sizes,
    configured,
    is_slow,
    probe,
    quantized,
    snr_db,
)

NAMES = BACKENDS.names()
LIBRARIES = ["bnb", "quanto", "hqq", "gptq"]  # backends that install a library's own module


def _cases(names: list[str]) -> list:
    """One parameter per backend, a calibrating backend's (GPTQ: seconds a block) marked slow."""
    return [pytest.param(n, marks=[pytest.mark.slow] if is_slow(n) else [], id=n) for n in names]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", _cases(NAMES))
def test_the_contract(name, check):
    check(configured(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_a_two_point_sweep_records_true_sizes(name, tmp_path):
    check_a_two_point_sweep_records_true_sizes(name, tmp_path)


@pytest.mark.parametrize("name", _cases(LIBRARIES))
def test_a_library_backend_installs_its_own_module(name):
    backend = configured(name)
    p = probe(backend.contract.width)
    block = quantized(backend, p.block, min(backend.supported_bits), p.inputs)
    for linear_name, _ in block_linears(p.block):
        assert type(block.get_submodule(linear_name)) is not torch.nn.Linear, linear_name


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_rtn_bytes_are_its_weights_packed_for_real(bits):
    backend = configured("rtn")
    p = probe(backend.contract.width)
    block = quantized(backend, p.block, bits, p.inputs)
    for linear_name, original in block_linears(p.block):
        installed = block.get_submodule(linear_name)
        packed = _rtn_packed_bytes(original, installed, bits, backend.group_size)
        assert backend.held_bytes(installed) == packed, linear_name


def _rtn_packed_bytes(original, installed, bits: int, group_size: int) -> int:
    """Bytes of the installed weights packed as one bit stream: per group its float16 scale
    and `bits`-wide zero point, then every weight's `bits`-wide code; plus a 16-bit bias.
    The codes are recovered from the installed weights and must decode back to them."""
    levels = 2**bits - 1
    w, w_hat = original.weight.detach().float(), installed.weight.detach().float()
    stream = []
    for start in range(0, w.shape[1], group_size):
        group, got = w[:, start : start + group_size], w_hat[:, start : start + group_size]
        scale = (group.amax(1).clamp(min=0) - group.amin(1).clamp(max=0)) / levels  # (rows,)
        zero = torch.round(-group.amin(1).clamp(max=0) / scale)  # float32, as stored
        codes = torch.round(got / scale[:, None]) + zero[:, None]
        assert codes.min() >= 0 and codes.max() <= levels
        torch.testing.assert_close((codes - zero[:, None]) * scale[:, None], got)
        for row in range(len(group)):
            half = np.float16(scale[row].item()).view(np.uint16)
            stream += [(int(half) >> i) & 1 for i in range(16)]
            stream += [(int(zero[row]) >> i) & 1 for i in range(bits)]
            stream += [(int(c) >> i) & 1 for c in codes[row].tolist() for i in range(bits)]
    bias = 0 if original.bias is None else original.bias.numel() * 2
    return len(np.packbits(np.array(stream, dtype=np.uint8))) + bias


OTHER_SETTINGS = [
    ("bnb", 4, {"quant_type": "fp4", "double_quant": False, "blocksize": 128}),
    ("bnb", 4, {"blocksize": 32}),
    ("quanto", 4, {"group_size": 32}),
    ("quanto", 2, {"group_size": 64}),
    ("hqq", 3, {"group_size": 32}),
    ("hqq", 1, {"group_size": 128}),
    ("rtn", 3, {"group_size": 48}),
]


@pytest.mark.parametrize(("name", "bits", "settings"), OTHER_SETTINGS)
def test_bytes_match_under_other_settings(name, bits, settings):
    backend = configured(name, **settings)
    p = probe(backend.contract.width)
    block = quantized(backend, p.block, bits, p.inputs)
    for linear_name, original in block_linears(p.block):
        held = backend.held_bytes(block.get_submodule(linear_name))
        assert backend.weight_bytes(original, bits) == held, linear_name


LIBRARY_WIDTHS = [
    pytest.param(n, b, marks=[pytest.mark.slow] if is_slow(n) else [], id=f"{n}-{b}")
    for n in LIBRARIES
    for b in sorted(BACKENDS.get(n).supported_bits - {FULL_PRECISION})
]


@pytest.mark.parametrize(("name", "bits"), LIBRARY_WIDTHS)
def test_eval_dequantized_holds_the_same_bytes_and_weights(name, bits):
    """rtn always evaluates dequantized weights; the libraries can, as a switch."""
    packed, plain = (
        configured(name, eval_dequantized=False),
        configured(name, eval_dequantized=True),
    )
    p = probe(packed.contract.width)
    a, b = quantized(packed, p.block, bits, p.inputs), quantized(plain, p.block, bits, p.inputs)
    for linear_name, _ in block_linears(p.block):
        held = packed.held_bytes(a.get_submodule(linear_name))
        assert plain.held_bytes(b.get_submodule(linear_name)) == held
    if name == "bnb" and bits == 8:
        return  # LLM.int8 also quantizes activations: a packed forward is not weight-only
    assert snr_db(p.run(a), p.run(b)) > 60  # the same weights, up to the compute dtype


class _GPT2Like(torch.nn.Module):
    """A block whose weight layer is GPT-2's Conv1D (weight stored (in, out))."""

    def __init__(self):
        super().__init__()
        self.c_fc = Conv1D(96, 128)  # nf=96 outputs, nx=128 inputs

    def forward(self, hidden, **_):
        return torch.nn.functional.gelu(self.c_fc(hidden))


@pytest.mark.parametrize("name", _cases(["bnb", "quanto", "hqq", "gptq"]))
def test_library_backends_take_conv1d_as_the_equivalent_linear(name):
    """GPT-2's Conv1D quantizes to exactly what the same weights in an nn.Linear give."""
    torch.manual_seed(0)
    block = _GPT2Like().requires_grad_(False)
    torch.nn.init.normal_(block.c_fc.bias, std=0.1)
    twin = copy.deepcopy(block)
    twin.c_fc = torch.nn.Linear(128, 96).requires_grad_(False)
    twin.c_fc.weight.copy_(block.c_fc.weight.t())
    twin.c_fc.bias.copy_(block.c_fc.bias)
    x = torch.randn(2, 16, 128)
    inputs = BlockInputs([x], [[{}]])
    bits = 8 if name == "bnb" else 4
    backend = configured(name, eval_dequantized=True)
    quantized_block = quantized(backend, block, bits, inputs)
    from_linear = quantized(backend, twin, bits, inputs)
    assert torch.equal(quantized_block.c_fc.weight, from_linear.c_fc.weight)
    assert backend.held_bytes(quantized_block.c_fc) == backend.weight_bytes(block.c_fc, bits)
    assert backend.weight_bytes(block.c_fc, bits) == backend.weight_bytes(twin.c_fc, bits)
    with torch.no_grad():
        assert snr_db(block(x), quantized_block(x)) > 15  # and it still computes the block


def test_a_width_a_backend_cannot_do_names_those_that_can():
    able = [n for n in NAMES if 2 in BACKENDS.get(n).supported_bits]
    with pytest.raises(LwqError, match=rf"quant=bnb cannot do 2 bits .*can: {', '.join(able)}$"):
        check_bits(configured("bnb"), 2)
    assert "rtn" in able and "bnb" not in able
    with pytest.raises(LwqError, match=r"quant=rtn cannot do 1 bits .*can: hqq$"):
        check_bits(configured("rtn"), 1)
