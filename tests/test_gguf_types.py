"""quant=gguf: llama.cpp's own types as a backend, quantized by ggml itself, so a sweep
measures what a GGUF export holds: the same weights bit for bit, the format's own bytes,
and a width the type cannot pack refused rather than silently changed."""

from __future__ import annotations

import pytest
import torch

from lwq.errors import LwqError
from lwq.llama_cpp import locate
from lwq.quant import make_backend
from tests.conftest import missing


@pytest.fixture(scope="module")
def backend():
    try:
        locate()
    except LwqError as err:
        missing(str(err))
    return make_backend("gguf")


def _linear(width: int, rows: int = 64, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(width, rows, bias=True)


def test_error_falls_with_bits_and_the_bytes_are_the_formats(backend):
    original = _linear(512)
    errors = []
    for bits, bits_per_weight in ((2, 2.625), (3, 3.4375), (4, 4.5), (8, 8.5)):
        linear = _linear(512)
        assert backend.quantize(linear, bits) is linear
        errors.append(float((linear.weight - original.weight).detach().pow(2).mean()))
        assert not torch.equal(linear.bias, torch.zeros_like(linear.bias))  # bias untouched
        held = backend.held_bytes(linear)
        assert held == backend.weight_bytes(original, bits)
        assert held - 64 * 2 == 64 * 512 * bits_per_weight / 8  # rows x blocks x block bytes
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-5


def test_a_width_the_type_cannot_pack_is_refused_and_a_32_wide_type_takes_it(backend):
    with pytest.raises(LwqError, match=r"blocks of 256 .* 576-wide .*types\.2=q4_0"):
        backend.quantize(_linear(576), 2)
    with pytest.raises(LwqError, match="blocks of 256"):
        backend.weight_bytes(_linear(576), 4)
    narrow = make_backend("gguf", types={"4": "q4_0"})
    linear = _linear(576)
    narrow.quantize(linear, 4)
    assert narrow.held_bytes(linear) == 64 * 576 // 32 * 18 + 64 * 2


def test_unknown_type_names_and_bit_widths_are_refused_at_construction():
    with pytest.raises(LwqError, match="not a llama.cpp type"):
        make_backend("gguf", types={"2": "q2_z"})
    with pytest.raises(LwqError, match="keys are bit-widths"):
        make_backend("gguf", types={"two": "q2_k"})


def test_q4_1_is_rtns_minmax_at_groups_of_32(backend):
    # GGUF's Q4_1 is min-max round-to-nearest over 32 weights with float16 scale and
    # minimum: lwq's RTN with range=minmax, group 32 (up to float16 rounding of those two)
    q4_1, rtn = (
        make_backend("gguf", types={"4": "q4_1"}),
        make_backend("rtn", group_size=32, range="minmax"),
    )
    a, b = _linear(256), _linear(256)
    q4_1.quantize(a, 4)
    rtn.quantize(b, 4)
    assert torch.allclose(a.weight, b.weight, atol=2e-3)
    assert not torch.equal(a.weight, _linear(256).weight)


@pytest.mark.slow
def test_a_sweep_with_llama_cpp_types_records_the_formats_bits(backend, tmp_path):
    from lwq.commands.sweep import run_sweep
    from tests.conftest import compose_config, records, small_run_overrides

    overrides = [*small_run_overrides(tmp_path), "quant=gguf", "sweep.high=8", "sweep.low=4"]
    with pytest.raises(LwqError, match="q4_k packs rows in blocks of 256 .* 128-wide"):
        run_sweep(compose_config(*overrides))  # ref-tiny is 128 wide: refused before any point
    assert not records(tmp_path)
    run_sweep(compose_config(*overrides, "quant.settings.types.4=q4_0"))
    points = [r for r in records(tmp_path) if r["kind"] == "quantized"]
    points.sort(key=lambda r: r["k"])
    assert [r["bits_per_weight"] for r in points] == [8.5, 6.5, 4.5]  # Q8_0, half Q4_0, Q4_0
    kl = [r["eval"]["kl"]["mean"] for r in points]
    assert 0 < kl[0] < kl[1] < kl[2]
