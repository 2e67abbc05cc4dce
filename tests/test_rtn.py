"""RTN: the contract every backend meets, checked on the reference implementation."""

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from lwq.errors import LwqError
from lwq.quant import BACKENDS, check_bits, make_backend
from lwq.quant.rtn import quantize_rows


def _linear(out_features=64, in_features=200, seed=0):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(in_features, out_features, bias=True)
    return layer


def _rel_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_error_falls_as_bits_rise():
    original = _linear()
    errors = []
    for bits in range(2, 9):
        layer = _linear()
        make_backend("rtn", group_size=64).quantize(layer, bits)
        errors.append(_rel_error(layer.weight, original.weight))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.01


def test_16_bits_is_identity():
    layer, original = _linear(), _linear()
    make_backend("rtn").quantize(layer, 16)
    assert torch.equal(layer.weight, original.weight)


@pytest.mark.parametrize("group_size", [16, 64, 200, 256])
def test_each_group_sits_on_a_grid_of_its_own_range(group_size):
    """Every value of a (row, group) is a whole number of that group's own step from zero,
    the step being its own range / (2^bits - 1); a grid shared by a row would fail this."""
    layer = _linear(in_features=200)
    original = layer.weight.detach().clone()
    bits = 3
    make_backend("rtn", group_size=group_size).quantize(layer, bits)
    w = layer.weight.detach()
    for start in range(0, 200, group_size):  # the last group may be shorter (200 % 64 = 8)
        before, after = original[:, start : start + group_size], w[:, start : start + group_size]
        lo = before.amin(dim=1, keepdim=True).clamp(max=0.0)
        hi = before.amax(dim=1, keepdim=True).clamp(min=0.0)
        step = (hi - lo) / (2**bits - 1)
        steps = after / step
        torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-3)
        assert ((after - before).abs() <= step / 2 + 1e-6).all()  # nearest point of that grid


def test_groups_are_independent():
    """Changing one group's weights leaves every other group's quantized values alone."""
    a, b = _linear(in_features=128), _linear(in_features=128)
    with torch.no_grad():
        b.weight[:, :32] *= 10
    rtn = make_backend("rtn", group_size=32)
    rtn.quantize(a, 4)
    rtn.quantize(b, 4)
    assert torch.equal(a.weight[:, 32:], b.weight[:, 32:])
    assert not torch.equal(a.weight[:, :32], b.weight[:, :32])


def test_conv1d_groups_along_its_input_dim():
    """GPT-2's Conv1D stores (in, out): the same maths as the transposed Linear."""
    linear = _linear(out_features=48, in_features=96)
    conv = Conv1D(48, 96)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.t())
    rtn = make_backend("rtn", group_size=32)
    rtn.quantize(linear, 3)
    rtn.quantize(conv, 3)
    assert torch.allclose(conv.weight.t(), linear.weight)


def test_group_size_0_is_one_group_a_row():
    """Per output channel: each row on the grid of its own whole range, and the bytes of
    one scale and one zero point a row."""
    layer, original = (
        _linear(out_features=16, in_features=200),
        _linear(out_features=16, in_features=200),
    )
    rtn = make_backend("rtn", group_size=0)
    rtn.quantize(layer, 3)
    assert torch.equal(layer.weight, quantize_rows(original.weight.detach(), 3, 200))
    assert not torch.equal(layer.weight, quantize_rows(original.weight.detach(), 3, 128))
    assert rtn.weight_bytes(layer, 3) == (16 * 200 * 3 + 16 * (16 + 3)) // 8 + 16 * 2
    with pytest.raises(LwqError, match="0 \\(per channel\\) or positive"):
        make_backend("rtn", group_size=-1)


def test_ragged_width_is_quantized_not_skipped():
    w = torch.randn(8, 100)
    q = quantize_rows(w, 2, 64)
    assert not torch.equal(q[:, 64:], w[:, 64:])
    assert len(torch.unique(q[0, 64:])) <= 4


def test_bytes_count_scales_and_zero_points():
    layer = _linear(out_features=64, in_features=200)
    rtn = make_backend("rtn", group_size=64)
    groups = 64 * 4  # ceil(200 / 64) = 4 groups per row
    expected = (64 * 200 * 4 + groups * (16 + 4)) // 8 + 64 * 2
    assert rtn.weight_bytes(layer, 4) == expected
    assert rtn.held_bytes(layer) == rtn.weight_bytes(layer, 16)  # not quantized yet
    installed = rtn.quantize(layer, 4)
    assert installed is layer  # rtn rounds in place and installs the module itself
    assert rtn.held_bytes(installed) == expected
    assert rtn.weight_bytes(layer, 16) == 64 * 200 * 2 + 64 * 2


def test_unsupported_bits_are_refused_with_the_fix():
    rtn = make_backend("rtn")
    with pytest.raises(LwqError, match="cannot do 1 bits"):
        check_bits(rtn, 1)
    with pytest.raises(LwqError, match="unknown quant backend 'rnt'.*did you mean 'rtn'"):
        BACKENDS.get("rnt")


def test_minmax_range_keeps_values_already_on_a_q4_1_grid():
    """A group built as GGUF's Q4_1 builds it (float minimum m, scale d, codes 0..15 with
    both ends used) comes back unchanged with range=minmax; the default range, which
    widens to hold 0 and rounds the offset to a whole step, moves it."""
    torch.manual_seed(0)
    m, d = torch.rand(8, 4, 1) + 0.5, torch.rand(8, 4, 1) * 0.1 + 0.01  # all weights > 0
    codes = torch.randint(0, 16, (8, 4, 32)).float()
    codes[..., 0], codes[..., 1] = 0, 15
    w = (codes * d + m).reshape(8, 128)
    assert torch.allclose(quantize_rows(w, 4, 32, "minmax"), w, atol=1e-6)
    assert (quantize_rows(w, 4, 32, "include_zero") - w).abs().max() > 0.01


def test_minmax_range_counts_a_16_bit_minimum_per_group():
    layer = torch.nn.Linear(128, 8, bias=False)
    # 8 x 128 weights at 4 bits, 32 groups of 32: Q4_1's 20 bytes per group
    assert make_backend("rtn", group_size=32, range="minmax").weight_bytes(layer, 4) == 32 * 20
    codes = 8 * 128 * 4 // 8  # bytes
    assert make_backend("rtn", group_size=32).weight_bytes(layer, 4) == codes + 32 * (16 + 4) // 8
    with pytest.raises(LwqError, match="quant.range=midrange is not a range"):
        make_backend("rtn", range="midrange")
