"""The backend contract, checked on every registered backend at every width it claims.

A block of the committed reference model is quantized the way a sweep does it (a copy,
each linear replaced by what the backend returns) with the settings of its
`conf/quant/<name>.yaml`; its output is compared with the original block's. A calibrated
backend (GPTQ) is calibrated on the inputs calibration text gives that block, and judged,
like the others, on a different text.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import yaml
from transformers.pytorch_utils import Conv1D

from lwq.commands.sweep import run_sweep
from lwq.errors import LwqError
from lwq.modeling.blocks import block_linears, find_blocks
from lwq.modeling.capture import BlockInputs
from lwq.plan import Plan
from lwq.quant import BACKENDS, check_bits, make_backend
from lwq.quant.base import FULL_PRECISION
from lwq.quant.cost import SizeTable
from lwq.quant.install import PlanApplier
from lwq.quant.variants import make_variants, quantize_block
from tests.conftest import (
    CONF,
    compose_config,
    records,
    reference_calibration,
    small_run_overrides,
)

# gguf's default K-quants need rows in blocks of 256 and ref-tiny is 128 wide: its contract
# is tested in tests/test_gguf_types.py (and bit for bit against llama.cpp's own file)
NAMES = [n for n in BACKENDS.names() if n != "gguf"]
WIDTHS = [(n, b) for n in NAMES for b in sorted(BACKENDS.get(n).supported_bits - {16})]
LIBRARIES = [n for n in NAMES if n != "rtn"]
LIBRARY_WIDTHS = [(n, b) for n, b in WIDTHS if n in LIBRARIES]
BLOCK = 5  # a middle block of ref-tiny
SNR_FLOOR_8_BITS_DB = 50.0  # measured 55.9 (bnb LLM.int8) to 65.0 dB (hqq) on this input
CALIBRATED = [n for n in NAMES if BACKENDS.get(n).calibrated]


def _cases(cases: list) -> list:
    """Parameter sets, those of a calibrated backend (GPTQ runs, seconds each) marked slow."""
    out = []
    for case in cases:
        values = case if isinstance(case, tuple) else (case,)
        marks = [pytest.mark.slow] if values[0] in CALIBRATED else []
        out.append(pytest.param(*values, marks=marks, id="-".join(map(str, values[:2]))))
    return out


def _backend(name: str, **overrides):
    """The backend as `quant=<name>` configures it (its conf file's settings)."""
    settings = yaml.safe_load((CONF / "quant" / f"{name}.yaml").read_text())["settings"]
    return make_backend(name, **{**settings, **overrides})


def _snr_db(reference: torch.Tensor, output: torch.Tensor) -> float:
    noise = (output - reference).float().pow(2).sum()
    return 10 * math.log10(reference.float().pow(2).sum() / noise)


@pytest.fixture(scope="module")
def block_io(ref_model):
    """(block, args, kwargs, output) of ref-tiny's block BLOCK on a real input."""
    model, tokenizer = ref_model
    block = find_blocks(model)[BLOCK]
    seen = {}

    def grab(_module, args, kwargs):
        seen.setdefault("call", (args, kwargs))

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    ids = tokenizer("def quantize(module, bits):\n    return module\n" * 4, return_tensors="pt")
    with torch.no_grad():
        model(**ids)
    handle.remove()
    args, kwargs = seen["call"]
    return block, args, kwargs, _run(block, args, kwargs)


@pytest.fixture(scope="module")
def calib_inputs(ref_model):
    """The calibration inputs entering block BLOCK (calibrated backends only use them)."""
    model, tokenizer = ref_model
    blocks = find_blocks(model)
    inputs = BlockInputs.capture(model, blocks, reference_calibration(tokenizer))
    for block in list(blocks)[:BLOCK]:
        inputs.advance(block)
    return inputs


def _run(block, args, kwargs) -> torch.Tensor:
    with torch.no_grad():
        out = block(*args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _quantized(block, backend, bits, inputs: BlockInputs):
    copied = copy.deepcopy(block)
    quantize_block(copied, backend, bits, inputs=inputs)
    return copied


def _installed(block: torch.nn.Module, name: str) -> torch.nn.Module:
    return block.get_submodule(name)


@pytest.mark.parametrize(("name", "bits"), _cases(WIDTHS))
def test_planned_bytes_are_the_bytes_the_installed_modules_hold(block_io, calib_inputs, name, bits):
    block = block_io[0]
    backend = _backend(name)
    quantized = _quantized(block, backend, bits, calib_inputs)
    for linear_name, original in block_linears(block):
        installed = _installed(quantized, linear_name)
        held = backend.held_bytes(installed)
        assert backend.weight_bytes(original, bits) == held, linear_name
        assert held < backend.weight_bytes(original, FULL_PRECISION)
        if name != "rtn":  # a library backend installs its own module
            assert type(installed) is not torch.nn.Linear
        else:  # rtn holds dequantized weights: pack them for real and count the bytes
            assert held == _rtn_packed_bytes(original, installed, bits, backend.group_size)


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
def test_bytes_match_under_other_settings(block_io, calib_inputs, name, bits, settings):
    block = block_io[0]
    backend = _backend(name, **settings)
    quantized = _quantized(block, backend, bits, calib_inputs)
    for linear_name, original in block_linears(block):
        held = backend.held_bytes(_installed(quantized, linear_name))
        assert backend.weight_bytes(original, bits) == held, linear_name


@pytest.mark.parametrize(("name", "bits"), _cases(LIBRARY_WIDTHS))
def test_eval_dequantized_holds_the_same_bytes_and_weights(block_io, calib_inputs, name, bits):
    """rtn always evaluates dequantized weights; the libraries can, as a switch."""
    block, args, kwargs, _ = block_io
    packed = _backend(name, eval_dequantized=False)
    plain = _backend(name, eval_dequantized=True)
    a, b = (
        _quantized(block, packed, bits, calib_inputs),
        _quantized(block, plain, bits, calib_inputs),
    )
    for linear_name, _ in block_linears(block):
        held = packed.held_bytes(_installed(a, linear_name))
        assert plain.held_bytes(_installed(b, linear_name)) == held
    if name == "bnb" and bits == 8:
        return  # LLM.int8 also quantizes activations: a packed forward is not weight-only
    out_packed, out_plain = _run(a, args, kwargs), _run(b, args, kwargs)
    assert _snr_db(out_packed, out_plain) > 60  # the same weights, up to the compute dtype


@pytest.mark.parametrize("name", _cases(NAMES))
def test_output_error_falls_as_bits_rise(block_io, calib_inputs, name):
    block, args, kwargs, reference = block_io
    backend = _backend(name)
    widths = sorted(backend.supported_bits - {FULL_PRECISION})
    snr = [
        _snr_db(reference, _run(_quantized(block, backend, b, calib_inputs), args, kwargs))
        for b in widths
    ]
    by_bits = dict(zip(widths, snr, strict=True))
    assert all(lo < hi for lo, hi in zip(snr, snr[1:], strict=False)), by_bits


@pytest.mark.parametrize("name", _cases([n for n in NAMES if 8 in BACKENDS.get(n).supported_bits]))
def test_8_bit_output_is_close_to_the_original(block_io, calib_inputs, name):
    block, args, kwargs, reference = block_io
    output = _run(_quantized(block, _backend(name), 8, calib_inputs), args, kwargs)
    assert _snr_db(reference, output) > SNR_FLOOR_8_BITS_DB


@pytest.mark.parametrize("name", _cases(NAMES))
def test_16_bits_is_the_identity(block_io, calib_inputs, name):
    block, args, kwargs, reference = block_io
    backend = _backend(name)
    quantized = _quantized(block, backend, FULL_PRECISION, calib_inputs)
    for linear_name, original in block_linears(block):
        installed = _installed(quantized, linear_name)
        assert type(installed) is type(original)
        assert torch.equal(installed.weight, original.weight)
        assert backend.held_bytes(installed) == backend.weight_bytes(original, FULL_PRECISION)
    assert torch.equal(_run(quantized, args, kwargs), reference)


# A module each backend cannot handle at a width it claims, and the message's key phrase.
UNHANDLED = {
    "rtn": (lambda: torch.nn.Embedding(16, 64), 4, "neither nn.Linear nor Conv1D"),
    "bnb": (lambda: torch.nn.Linear(64, 48), 4, "multiple of 32"),
    "quanto": (lambda: torch.nn.Linear(200, 64), 4, "must divide the input size 200"),
    "hqq": (lambda: torch.nn.Linear(100, 64), 4, "must divide the input size 100"),
    "gptq": (lambda: torch.nn.Linear(200, 64), 4, "multiples of 32; proj has 200"),
}


def test_every_backend_has_an_unhandled_shape_case():
    assert set(UNHANDLED) == set(NAMES)


@pytest.mark.parametrize("name", _cases(NAMES))
def test_a_shape_the_backend_cannot_handle_raises_naming_the_module(name):
    make, bits, phrase = UNHANDLED[name]
    block = torch.nn.Module()
    block.proj = make()
    inputs = BlockInputs([torch.randn(1, 4, block.proj.weight.shape[1])], [[{}]])
    if name in CALIBRATED:  # whole blocks only; the shape is refused before any run
        with pytest.raises(LwqError, match="whole blocks"):
            _backend(name).quantize(block.proj, bits)
        with pytest.raises(LwqError, match=f"block 7 .*{phrase}"):
            quantize_block(block, _backend(name), bits, inputs, where="block 7 ")
        return
    with pytest.raises(LwqError, match=phrase):
        _backend(name).quantize(block.proj, bits)
    if isinstance(block.proj, torch.nn.Linear):  # through the applier: block and module named
        with pytest.raises(LwqError, match=f"block 7 proj: .*{phrase}"):
            quantize_block(block, _backend(name), bits, where="block 7 ")


class _GPT2Like(torch.nn.Module):
    """A block whose weight layer is GPT-2's Conv1D (weight stored (in, out))."""

    def __init__(self):
        super().__init__()
        self.c_fc = Conv1D(96, 128)  # nf=96 outputs, nx=128 inputs

    def forward(self, hidden, **_):
        return torch.nn.functional.gelu(self.c_fc(hidden))


@pytest.mark.parametrize("name", _cases(LIBRARIES))
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
    backend = _backend(name, eval_dequantized=True)
    quantized = _quantized(block, backend, bits, inputs)
    from_linear = _quantized(twin, backend, bits, inputs)
    assert torch.equal(quantized.c_fc.weight, from_linear.c_fc.weight)
    assert backend.held_bytes(quantized.c_fc) == backend.weight_bytes(block.c_fc, bits)
    assert backend.weight_bytes(block.c_fc, bits) == backend.weight_bytes(twin.c_fc, bits)
    with torch.no_grad():
        assert _snr_db(block(x), quantized(x)) > 15  # and it still computes the block


def test_a_width_no_backend_of_this_kind_does_names_those_that_can():
    able = r"can: gguf, gptq, hqq, quanto, rtn"
    with pytest.raises(LwqError, match=rf"quant=bnb cannot do 2 bits .*{able}"):
        check_bits(_backend("bnb"), 2)
    with pytest.raises(LwqError, match=r"quant=rtn cannot do 1 bits .*can: hqq$"):
        check_bits(_backend("rtn"), 1)


@pytest.mark.parametrize("name", _cases(LIBRARIES))
def test_applier_installs_library_modules_records_their_bytes_and_restores(ref_model, name):
    model, _ = ref_model
    blocks = find_blocks(model)
    before = {k: v.clone() for k, v in blocks[0].state_dict().items()}
    original = blocks[0]
    backend = _backend(name)
    sizes = SizeTable(model, blocks, backend)  # from the model as loaded
    calibration = reference_calibration(ref_model[1], 4, 64)
    variants = make_variants(backend, lambda: BlockInputs.capture(model, blocks, calibration))
    applier = PlanApplier(blocks, variants)
    low = min(BACKENDS.get(name).supported_bits)
    full = Plan((FULL_PRECISION,) * len(blocks))
    applier_plan = Plan((low,) + full.bits[1:])
    try:  # the shared reference model: put back whatever happens
        applier.apply(applier_plan)
        assert blocks[0] is not original
        for linear_name, _ in block_linears(original):
            assert type(_installed(blocks[0], linear_name)) is not torch.nn.Linear
        cost = sizes.cost(applier_plan)
        held = sum(
            backend.held_bytes(_installed(blocks[0], linear_name))
            for linear_name, _ in block_linears(original)
        )
        assert cost.block_bytes[0] == held
        assert cost.weight_bytes < sizes.cost(full).weight_bytes
    finally:
        applier.restore()
    assert blocks[0] is original
    assert all(torch.equal(v, blocks[0].state_dict()[k]) for k, v in before.items())


SWEEP_BITS = {"rtn": (4, 2), "bnb": (8, 4), "quanto": (4, 2), "hqq": (4, 2), "gptq": (4, 2)}


@pytest.mark.slow
@pytest.mark.parametrize("name", _cases(NAMES))
def test_a_short_sweep_runs_and_records_true_sizes(tmp_path, name):
    high, low = SWEEP_BITS[name]
    cfg = compose_config(
        *small_run_overrides(tmp_path),
        f"quant={name}",
        "sweep.fractions=[0,1]",
        f"sweep.high={high}",
        f"sweep.low={low}",
    )
    run_sweep(cfg)
    points = [r for r in records(tmp_path) if r["kind"] == "quantized"]
    assert [r["avg_bits"] for r in points] == [high, low]
    assert points[0]["weight_bytes"] > points[1]["weight_bytes"]
    for r in points:
        assert r["config"]["quant"]["name"] == name
        assert r["bits_per_weight"] > r["avg_bits"]  # scales, zero points, absmaxes cost bits
        assert math.isfinite(r["eval"]["cross_check"]["token_perplexity"])
        if name != "rtn":  # the backend's settings, in every record
            assert r["quant"]["eval_dequantized"] is (name in CALIBRATED)
        for phase in ("quantize_memory", "eval_memory"):  # peak memory of both phases
            assert r[phase]["peak_bytes"] > 0, phase
