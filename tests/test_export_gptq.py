"""`python run.py quant=gptq export export.format=gptq`: the plan's GPTQ blocks saved as a
GPTQ checkpoint with one bit-width per block (gptqmodel's `dynamic` rules), holding exactly
the bytes lwq counts, and loaded back by gptqmodel to the same perplexity; slider's blocks
as well."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lwq.commands.export import check_export, run_export
from lwq.config import compose_run
from lwq.errors import LwqError
from lwq.export.gptq_checkpoint import quantization_config, same_packed_tensors
from lwq.metrics import ranking
from lwq.metrics.position import position_scores
from lwq.modeling.blocks import block_linears, find_blocks, linear_shape
from lwq.plan import Plan
from lwq.quant import make_backend

SETTINGS = {"group_size": 128, "sym": False, "act_order": False}


def test_the_common_width_is_the_checkpoints_and_every_other_block_has_a_rule():
    config = quantization_config(Plan((4, 2, 16, 4, 2, 4)), SETTINGS, "model.layers")
    assert config["bits"] == 4 and config["checkpoint_format"] == "gptq"
    assert config["dynamic"] == {
        r"+:model\.layers\.1\..*": {"bits": 2},
        r"-:model\.layers\.2\..*": {},
        r"+:model\.layers\.4\..*": {"bits": 2},
    }
    # gptqmodel matches rules from the start of a module's name
    rule = re.compile(r"model\.layers\.1\..*")
    assert rule.match("model.layers.1.mlp.down_proj")
    assert not rule.match("model.layers.11.mlp.down_proj")
    with pytest.raises(LwqError, match="quantizes no block"):
        quantization_config(Plan((16, 16)), SETTINGS, "model.layers")


def test_a_gptq_checkpoint_is_asked_of_gptq_only():
    run = compose_run("command=export", "export.format=gptq", "export.k=3")
    with pytest.raises(LwqError, match="add quant=gptq or quant=slider"):
        check_export(run)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """ref-tiny, its 4 least important blocks by position at 2 bits, the rest at 4, with
    one block left at full precision and one mixing widths (q, k, v at 2, o left as
    loaded, gate and up at 8) by a plan file: one export for the tests below."""
    tmp = tmp_path_factory.mktemp("gptq")
    order = ranking(position_scores(None, range(12)), reverse=False)
    bits = [2 if i in order[:4] else 4 for i in range(12)]
    bits[order[-1]] = 16
    bits[order[-2]] = [2, 2, 2, 16, 8, 8, 4]
    plan_file = tmp / "plan.yaml"
    plan_file.write_text(f"bits: {bits}\n")
    run = compose_run(
        "command=export",
        "quant=gptq",
        "export.format=gptq",
        f"plan_file={plan_file}",
        f"export.out={tmp / 'out'}",
        "export.check_ctx=128",
        "export.check_chunks=2",
        f"paths.results={tmp}",
        "tracking=none",
    )
    return run_export(run), tmp / "out", bits


@pytest.mark.slow
def test_the_checkpoint_holds_the_plan_and_the_bytes_lwq_counts(exported, ref_model):
    manifest, out, bits = exported
    assert manifest["plan"] == bits
    saved = json.loads((out / "config.json").read_text())["quantization_config"]
    assert saved == json.loads((out / "quantize_config.json").read_text())
    # 4 blocks at 2, one at 16; the mixed block: q, k, v at 2, o at 16, gate and up at 8
    assert saved["bits"] == 4 and len(saved["dynamic"]) == 5 + 6
    at = bits.index([2, 2, 2, 16, 8, 8, 4])
    mixed = rf"model\.layers\.{at}\.self_attn\.o_proj"
    assert saved["dynamic"]["-:" + mixed] == {}
    backend = make_backend("gptq")
    for i, block in enumerate(find_blocks(ref_model[0])):
        linears = [m for _, m in block_linears(block)]
        widths = bits[i] if isinstance(bits[i], list) else [bits[i]] * len(linears)
        held = sum(backend.weight_bytes(m, b) for m, b in zip(linears, widths, strict=True))
        weights = sum(linear_shape(m)[0] * linear_shape(m)[1] for m in linears)
        assert manifest["blocks"][i]["bits_per_weight"] == round(8 * held / weights, 4)


@pytest.mark.slow
def test_gptqmodel_loads_the_checkpoint_to_lwqs_perplexity(exported):
    check = exported[0]["check"]
    assert check["chunks"] == 2 and check["n_ctx"] == 128
    assert check["same_packed_tensors"]  # codes, zero points, scales, group index: exact
    # the loader builds the model in float16 (its CPU kernel's only dtype): rounding of
    # the rotary buffers and the like, then cast back to lwq's float32
    assert abs(check["relative_difference"]) < 1e-3
    assert 5 < check["gptqmodel"] < 200
    assert json.loads(Path(exported[1], "lwq_export.json").read_text()) == exported[0]


@pytest.mark.slow
def test_a_changed_scale_is_caught_by_the_packed_tensor_check(exported):
    from gptqmodel import BACKEND, GPTQModel

    out = str(exported[1])
    first, second = (
        GPTQModel.load(out, device="cpu", backend=BACKEND.TORCH, dtype=torch.float16).model
        for _ in range(2)
    )
    blocks = first.model.layers
    assert same_packed_tensors(first, blocks, second)
    second.model.layers[5].mlp.down_proj.scales[0, 0] += 1
    assert not same_packed_tensors(first, blocks, second)


@pytest.mark.slow
def test_slider_blocks_are_saved_as_a_gptq_checkpoint_and_load_back(tmp_path):
    """quant=slider's plan (ref-tiny, 4 blocks at 2 bits, the rest at 4; a cheap
    calibration) exported as GPTQ: gptqmodel loads exactly the packed codes, scales and
    zero points lwq installed, to lwq's perplexity."""
    order = ranking(position_scores(None, range(12)), reverse=False)
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(f"bits: {[2 if i in order[:4] else 4 for i in range(12)]}\n")
    run = compose_run(
        "command=export",
        "quant=slider",
        "quant.settings.epochs=2",
        "quant.settings.group_size=32",
        "calib.samples=2",
        "calib.seq_len=64",
        "export.format=gptq",
        f"plan_file={plan_file}",
        f"export.out={tmp_path / 'out'}",
        "export.check_ctx=128",
        "export.check_chunks=2",
        f"paths.results={tmp_path}",
        "tracking=none",
    )
    manifest = run_export(run)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert saved["bits"] == 4 and saved["group_size"] == 32 and saved["sym"] is False
    assert len(saved["dynamic"]) == 4
    check = manifest["check"]
    assert check["same_packed_tensors"]
    assert abs(check["relative_difference"]) < 1e-3 and 5 < check["gptqmodel"] < 500
