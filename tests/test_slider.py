"""SliderQuant's training and merge on the reference model: training lowers a window's
error below its untrained start, and a window of mixed bits stores each block at its own.
(The schedule is in test_slider_schedule.py; the shared contract in test_backends.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from lwq.errors import LwqError
from lwq.modeling.blocks import block_linears, find_blocks
from lwq.modeling.capture import BlockInputs
from lwq.quant import make_backend
from lwq.quant.slider import BITS_ATTR, LearnedWeight
from tests.conftest import reference_calibration


@pytest.fixture(scope="module")
def first_blocks(ref_model):
    """Copies of ref-tiny's first 3 blocks and the calibration inputs entering block 0."""
    model, tokenizer = ref_model
    blocks = find_blocks(model)
    inputs = BlockInputs.capture(model, blocks, reference_calibration(tokenizer, 8, 64))
    return [copy.deepcopy(b) for b in list(blocks)[:3]], inputs


def _window_error(blocks, reference, inputs) -> float:
    """Mean squared error of the window's output against the full-precision window's."""
    total = 0.0
    for batch, hidden in enumerate(inputs.hidden):
        out, target = hidden, hidden
        with torch.no_grad():
            for j, (block, full) in enumerate(zip(blocks, reference, strict=True)):
                kwargs = inputs.kwargs[j][batch]
                out = block(out, **kwargs)
                out = out[0] if isinstance(out, tuple) else out
                target = full(target, **kwargs)
                target = target[0] if isinstance(target, tuple) else target
        total += F.mse_loss(out, target).item()
    return total / len(inputs.hidden)


def _untrained(blocks, bits: int, group_size: int):
    """The same quantizer at its starting point (clipping 0.982, no update), merged."""
    out = copy.deepcopy(blocks)
    for block in out:
        for name, linear in block_linears(block):
            learned = LearnedWeight(linear.weight, bits, group_size, rank=4, init=4.0)
            start = copy.deepcopy(linear)
            start.weight.data = learned.merged()[0]
            block.set_submodule(name, start)
    return out


def test_training_lowers_the_windows_error_below_its_untrained_start(first_blocks):
    blocks, inputs = first_blocks
    backend = make_backend("slider", epochs=20, group_size=128, windows="0-2")
    trained = backend.quantize(copy.deepcopy(blocks), (2, 2, 2), inputs.copy())
    before = _window_error(_untrained(blocks, 2, 128), blocks, inputs)
    after = _window_error(trained, blocks, inputs)
    assert after < 0.9 * before, (before, after)  # measured 0.960 -> 0.755 (0.506 at 60)


def test_a_mixed_bit_window_stores_each_block_at_its_own_bits(first_blocks):
    blocks, inputs = first_blocks
    backend = make_backend("slider", epochs=2, group_size=0, windows="0-2")
    bits = (2, 16, 3)
    out = backend.quantize(copy.deepcopy(blocks), bits, inputs.copy())
    for block, original, b in zip(out, blocks, bits, strict=True):
        for name, linear in block_linears(block):
            weight = linear.weight.detach()
            if b == 16:
                assert torch.equal(weight, original.get_submodule(name).weight), name
                assert not hasattr(linear, BITS_ATTR)
                continue
            assert getattr(linear, BITS_ATTR) == b
            levels = [len(torch.unique(row)) for row in weight]  # per channel: one grid a row
            assert max(levels) <= 2**b, (name, max(levels))
            held = backend.held_bytes(linear)
            assert held == backend.weight_bytes(original.get_submodule(name), b)


def test_bf16_autocast_is_a_setting_that_changes_the_result_not_the_grid(first_blocks):
    blocks, inputs = first_blocks
    with pytest.raises(LwqError, match="autocast must be one of auto, off, bf16"):
        make_backend("slider", autocast="fp16")
    assert "autocast" not in make_backend("slider").settings()  # earlier keys stay valid
    outs = {}
    for mode in ("off", "bf16"):
        backend = make_backend("slider", epochs=2, group_size=0, windows="0-2", autocast=mode)
        assert backend.settings().get("autocast") == mode
        outs[mode] = backend.quantize(copy.deepcopy(blocks), (2, 2, 2), inputs.copy())
    pairs = [
        (name, a.weight, b.weight)
        for off, bf16 in zip(outs["off"], outs["bf16"], strict=True)
        for (name, a), (_, b) in zip(block_linears(off), block_linears(bf16), strict=True)
    ]
    for name, _, weight in pairs:
        assert weight.dtype == torch.float32, name  # merged in the loaded dtype
        assert max(len(torch.unique(row)) for row in weight) <= 4, name  # 2 bits a channel
    assert any(not torch.equal(a, b) for _, a, b in pairs)  # the bf16 passes were used


def test_a_short_last_group_has_a_grid_of_its_own_columns():
    """200 inputs in groups of 64: three whole groups and one of 8 columns, which gets
    its own scale and zero point from those 8 (all positive here, so padding them to a
    whole group with zeros would have moved its minimum) and its weights on that grid."""
    torch.manual_seed(0)
    weight = torch.randn(16, 200)
    weight[:, 192:] = weight[:, 192:].abs() + 0.5
    learned = LearnedWeight(weight, 3, 64, rank=4, init=4.0)
    merged, scale, zero = learned.merged()
    assert scale.shape == zero.shape == (16, 4) and merged.shape == weight.shape
    clip = torch.sigmoid(torch.tensor(4.0))
    tail = weight[:, 192:]
    expected = clip * (tail.amax(1) - tail.amin(1)) / 7
    torch.testing.assert_close(scale[:, 3], expected)
    groups = torch.arange(200) // 64
    codes = torch.round(merged / scale[:, groups] + zero[:, groups])
    assert codes.min() >= 0 and codes.max() <= 7
    torch.testing.assert_close((codes - zero[:, groups]) * scale[:, groups], merged)
    assert (
        make_backend("slider", group_size=64).weight_bytes(torch.nn.Linear(200, 16, bias=False), 3)
        == (16 * 200 * 3 + 16 * 4 * (16 + 3)) // 8
    )


@pytest.mark.parametrize("group_size", [32, 256])  # 256: 384 inputs end in a group of 128
def test_merged_blocks_pack_into_gptq_linears_on_the_same_grid(first_blocks, group_size):
    """The merge keeps each linear's grid; packed for a GPTQ checkpoint, every weight is
    its code on that grid (scales stored in float16, as GPTQ stores them)."""
    from lwq.quant.slider import SCALE_BUFFER, ZERO_BUFFER

    blocks, inputs = first_blocks
    backend = make_backend("slider", epochs=2, group_size=group_size, windows="0-2")
    bits = (2, 4, 3)
    out = backend.quantize(copy.deepcopy(blocks), bits, inputs.copy())
    for block, b in zip(out, bits, strict=True):
        grids = {}
        for name, linear in block_linears(block):
            scale, zero = getattr(linear, SCALE_BUFFER), getattr(linear, ZERO_BUFFER)
            groups = torch.arange(linear.in_features) // group_size
            s, z = scale[:, groups], zero[:, groups]
            codes = torch.round(linear.weight / s + z)
            assert codes.min() >= 0 and codes.max() <= 2**b - 1, name
            assert torch.equal((codes - z) * s, linear.weight), name  # exactly on the grid
            grids[name] = (codes - z) * s.half().float()
        backend.pack(block, b)
        for name, expected in grids.items():
            packed = block.get_submodule(name)
            assert packed.bits == b and packed.group_size == group_size, name
            stored = packed.dequantize_weight().float().T  # (in, out) float16 -> (out, in)
            assert (stored - expected).abs().le(expected.abs() * 2**-10).all(), name
