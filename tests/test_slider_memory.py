"""What a slider calibration needs in memory, against hand arithmetic on Llama-2-7B's shapes
(a meta model: no weights) at the authors' 128 x 2048 calibration, and the refusal of a
calibration that does not fit."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig

from lwq.errors import LwqError
from lwq.modeling.blocks import find_blocks
from lwq.modeling.load import meta_model
from lwq.quant import make_backend
from lwq.quant.slider import check_fits

GIB = 2**30
HIDDEN, INTER, BLOCKS = 4096, 11008, 32


@pytest.fixture(scope="module")
def llama2_7b_blocks():
    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=BLOCKS,
        num_attention_heads=32,
        vocab_size=32000,
    )
    return find_blocks(meta_model(config))


def _learned_per_block(rank: int = 4) -> int:
    """By hand: rank x (in + out) for A and B, 2 x out clips per channel, 7 linears."""
    square = rank * (HIDDEN + HIDDEN) + 2 * HIDDEN  # q, k, v, o: 32768 + 8192
    up = rank * (HIDDEN + INTER) + 2 * INTER  # gate, up: 60416 + 22016
    down = rank * (INTER + HIDDEN) + 2 * HIDDEN  # down: 60416 + 8192
    assert 4 * square + 2 * up + down == 397_312
    return 4 * square + 2 * up + down


def test_llama2_7b_at_128_x_2048_needs_4_gib_a_stream_in_float32(llama2_7b_blocks):
    backend = make_backend("slider")  # the authors' settings: (2, 1, 4), rank 4, per channel
    bits = (2,) * BLOCKS
    needed = backend.calibration_bytes(llama2_7b_blocks, bits, 128, 2048, HIDDEN, dtype_bytes=4)
    assert needed["inputs"] == needed["targets"] == 4 * GIB  # the figure
    assert needed["streams"] == 8 * GIB
    # every block's parameters, plus gradients and two AdamW moments of a 4-block head window
    per_block = _learned_per_block()
    assert needed["learned"] == 4 * (BLOCKS * per_block + 3 * 4 * per_block) == 69_926_912
    linears = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER  # 202,375,168 weights a block
    norms = 2 * HIDDEN
    reference = (linears + norms) * 4  # the full-precision copy, float32 here
    working = linears * 4 + norms * 4  # float32 weight copies inside the quantizer
    assert needed["weights"] == BLOCKS * (reference + working)


def test_bf16_models_halve_the_streams_and_the_reference_but_not_the_learned_weights(
    llama2_7b_blocks,
):
    backend = make_backend("slider", window=1, stride=1, fill=1)
    bits = (16,) + (3,) * (BLOCKS - 1)  # block 0 left alone: nothing learned there
    needed = backend.calibration_bytes(llama2_7b_blocks, bits, 128, 2048, HIDDEN, dtype_bytes=2)
    assert needed["streams"] == 4 * GIB and needed["inputs"] == 2 * GIB
    per_block = _learned_per_block()
    assert needed["learned"] == 4 * ((BLOCKS - 1) * per_block + 3 * per_block)  # 1-block windows
    linears, norms = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER, 2 * HIDDEN
    untouched = 2 * (linears + norms) * 2  # block 0: two copies in bfloat16
    quantized = (linears + norms) * 2 + linears * 4 + norms * 2
    assert needed["weights"] == untouched + (BLOCKS - 1) * quantized


def test_a_calibration_that_does_not_fit_is_refused_naming_the_fix():
    needed = {"inputs": 4 * GIB, "streams": 8 * GIB, "targets": 4 * GIB}
    check_fits(needed, 16 * GIB, "cuda:0")
    with pytest.raises(LwqError, match=r"needs 16\.0 GiB on cuda:0 .* lower calib\.samples"):
        check_fits(needed, 16 * GIB - 1, "cuda:0")


def test_run_py_refuses_a_calibration_larger_than_free_memory_before_loading(capsys):
    from tests.conftest import REF_MODEL, refused_by_run_py

    line = refused_by_run_py(
        capsys, f"model.path={REF_MODEL}", "quant=slider", "calib.samples=200000"
    )
    assert "quant=slider needs" in line and "lower calib.samples or calib.seq_len" in line
    assert "streams 48.83" in line  # 2 x 200000 x 256 tokens x 128 wide x 4 bytes


def test_the_dry_run_states_the_calibration_memory(capsys):
    from lwq.commands.dry_run import run_dry
    from tests.conftest import REF_MODEL, compose_config

    run_dry(compose_config(f"model.path={REF_MODEL}", "quant=slider", "tracking=none"))
    out = capsys.readouterr().out
    assert "calibration (quant=slider, every block at 2 bits)" in out
    assert "streams 0.01" in out  # 2 x 32 x 256 tokens x 128 wide x 4 bytes = 0.0078 GiB
