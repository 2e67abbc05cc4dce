"""`python run.py export`: a plan as a GGUF file, written by llama.cpp's own tools, read back
for the types and bits each block really got, and checked in llama.cpp against lwq on the
weights the file holds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lwq.commands import run as run_command
from lwq.commands.export import _plan, run_export
from lwq.config import compose_run
from lwq.errors import LwqError
from lwq.export.gguf_file import block_types, tensor_names, tensor_type_rules
from lwq.llama_cpp import final_perplexity, locate
from lwq.metrics import ranking
from lwq.metrics.position import position_scores
from lwq.plan import Plan
from lwq.quant import make_backend
from lwq.quant.gguf_types import DEFAULT_TYPES
from tests.conftest import ROOT, missing, refused_by_run_py
from tools.packaged_model import PACKAGED

SMOLLM2 = ROOT / PACKAGED["smollm2-135m"].out


def test_each_width_gets_its_llama_cpp_type_and_a_width_without_one_is_refused():
    assert block_types(Plan((4, 2, 8, 16)), DEFAULT_TYPES) == ["q4_k", "q2_k", "q8_0", "f16"]
    with pytest.raises(LwqError, match=r"7\]-bit blocks .* export.types.7="):
        block_types(Plan((4, 7)), DEFAULT_TYPES)


def test_a_blocks_rule_matches_that_block_only():
    # llama-quantize takes the first rule whose regex is found in a tensor's name
    rules = [rule.split("=") for rule in tensor_type_rules(["q4_k"] * 12)]
    names = [f"blk.{i}.ffn_down.weight" for i in range(12)]
    for i, (pattern, kind) in enumerate(rules):
        assert [n for n in names if re.search(pattern, n)] == [f"blk.{i}.ffn_down.weight"]
        assert kind == "q4_k"


def test_a_mixed_block_gets_a_rule_per_tensor_named_as_gguf_names_it():
    linears = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]  # fmt: skip
    names = tensor_names("llama", "model.layers", [linears, linears])
    assert names[1] == [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ]
    wanted = block_types(Plan((4, (2, 2, 2, 4, 8, 8, 16))), DEFAULT_TYPES, names)
    assert wanted[0] == "q4_k" and wanted[1]["attn_output"] == "q4_k"
    assert wanted[1]["ffn_up"] == "q8_0" and wanted[1]["ffn_down"] == "f16"
    rules = [rule.split("=") for rule in tensor_type_rules(wanted)]
    assert len(rules) == 1 + 7
    tensors = [f"blk.{i}.{n}.weight" for i in range(2) for n in names[1]]
    for pattern, kind in rules[1:]:
        hit = [t for t in tensors if re.search(pattern, t)]
        assert len(hit) == 1 and hit[0].startswith("blk.1.")
        assert kind == wanted[1][hit[0].split(".")[2]]
    with pytest.raises(LwqError, match="GGUF names"):
        block_types(Plan((4, (2, 4))), DEFAULT_TYPES)
    with pytest.raises(LwqError, match="allocate.unit=block"):
        tensor_names("llama", "model.layers", [["mlp.strange"]])


def test_export_settings_are_checked_at_the_boundary():
    run = compose_run("command=export", "export.k=3", "export.types.2=iq2_xxs")
    assert run.export.k == 3 and run.export.gguf.types[2] == "iq2_xxs"
    assert run.export.gguf.types[4] == "q4_k"
    with pytest.raises(LwqError, match="export.k=-1"):
        compose_run("command=export", "export.k=-1")
    with pytest.raises(LwqError, match="export.embeddings"):
        compose_run("command=export", "export.embeddings=q2_k")
    assert compose_run("command=sweep").export is None  # other commands carry no export
    # a quant=gguf sweep measured its own types: its export writes those
    run = compose_run("command=export", "quant=gguf", "quant.settings.types.4=q4_1")
    assert run.export.gguf.types[4] == "q4_1" and run.export.gguf.types[2] == "q2_k"


def test_llama_perplexitys_final_estimate_is_read_and_its_absence_is_an_error():
    assert final_perplexity("...\nFinal estimate: PPL = 31.4159 +/- 0.52\n") == 31.4159
    with pytest.raises(LwqError, match="no final estimate"):
        final_perplexity("llama_model_load: error loading model")


def _run(*overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run.py", "tracking=none", *overrides],
        cwd=ROOT,
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_bad_export_input_is_one_line_and_exit_2_before_anything_loads(tmp_path):
    no_tools = _run("export", "export.k=3", env={"LWQ_LLAMA_CPP": str(tmp_path)})
    assert no_tools.returncode == 2
    assert no_tools.stderr.strip().count("\n") == 0
    assert "llama-quantize" in no_tools.stderr and "LWQ_LLAMA_CPP" in no_tools.stderr


def test_an_export_without_a_plan_or_with_too_many_blocks_is_refused_by_run_py(tmp_path, capsys):
    tools()
    results = f"paths.results={tmp_path}"
    assert "export.k=<blocks at sweep.low>" in refused_by_run_py(capsys, "export", results)
    too_many = refused_by_run_py(capsys, "export", "export.k=13", results)
    assert "ref-tiny has 12 blocks" in too_many


@pytest.mark.slow
def test_a_tokenizer_llama_cpp_cannot_convert_is_one_line_and_leaves_no_file(tmp_path):
    # ref-tiny's tokenizer is our own: llama.cpp's converter cannot write it, and says so
    tools()
    run = compose_run(
        "command=export", "export.k=3", "metric=position", f"paths.results={tmp_path}"
    )
    with pytest.raises(LwqError, match="does not know the tokenizer") as refused:
        run_command(run)  # what run.py's main runs; it prints the LwqError as one line
    assert "\n" not in str(refused.value)
    assert not [p for p in (tmp_path / "exports").rglob("*") if p.is_file()]  # no partial file


def test_the_plan_comes_from_a_plan_file_or_the_allocator(tmp_path):
    plan_file = tmp_path / "mine.yaml"
    plan_file.write_text("bits: [4, 4, 2, 2, 8, 4, 4, 4, 2, 4, 4, 16]\n")
    run = compose_run("command=export", f"plan_file={plan_file}", f"paths.results={tmp_path}")
    plan, source = _plan(run)
    assert plan.bits == (4, 4, 2, 2, 8, 4, 4, 4, 2, 4, 4, 16) and source["label"] == "plan-mine"
    run = compose_run(
        "command=export", "budget=3.0", "calib.samples=2", f"paths.results={tmp_path}"
    )
    plan, source = _plan(run)
    assert plan.avg_bits <= 3.0 and set(plan.bits) <= {2, 3, 4, 8}
    assert len(set(plan.bits)) > 1 and source["budget"] == 3.0
    searched = [
        "allocate.method=search",
        "allocate.search.generations=1",
        "allocate.search.offspring=2",
        "allocate.search.schedule=[[64,1]]",
    ]
    run = compose_run(
        "command=export", "budget=3.0", "calib.samples=2", f"paths.results={tmp_path}", *searched
    )
    found, source = _plan(run)
    assert found.avg_bits <= 3.0 and source["label"] == "budget3.0-searched"
    cached = next((tmp_path / "cache" / "search").glob("search-*.json"))
    assert json.loads(cached.read_text())["plan"] == list(found.bits)


def tools():
    try:
        return locate()
    except LwqError as err:
        missing(str(err))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """SmolLM2 with the 12 least important blocks by position at 2 bits, the rest at 4,
    exported and checked on 2 chunks of 256 tokens (one export for the tests below)."""
    tools()
    if not (SMOLLM2 / "model.safetensors").is_file():
        missing(f"{SMOLLM2} is missing; run `make smollm2`")
    out = tmp_path_factory.mktemp("export") / "smollm2.gguf"
    run = compose_run(
        "command=export",
        "model=smollm2-135m",
        "metric=position",
        "export.k=12",
        f"export.out={out}",
        "export.check_chunks=2",
        "export.check_ctx=256",
        f"paths.results={out.parent}",
        "tracking=none",
    )
    return run_export(run), out


@pytest.mark.slow
def test_the_file_holds_the_plan_the_metric_gives(exported):
    manifest, out = exported
    order = ranking(position_scores(None, range(30)), reverse=False)
    low = set(order[:12])
    assert manifest["plan"] == [2 if i in low else 4 for i in range(30)]
    assert manifest["wanted_types"] == ["q2_k" if i in low else "q4_k" for i in range(30)]
    assert json.loads(Path(f"{out}.json").read_text()) == manifest


@pytest.mark.slow
def test_real_bits_come_from_the_file_and_every_fallback_is_listed(exported):
    manifest, _ = exported
    # K-quants need rows that are a multiple of 256: SmolLM2's 576-wide inputs (q, k, v,
    # o, gate, up) fall back; ffn_down reads 1536 = 6 x 256 and keeps its type
    fallen = {f["tensor"] for f in manifest["fallbacks"]}
    assert not any(name.endswith("ffn_down.weight") for name in fallen)
    assert len(fallen) == 30 * 6
    for block in manifest["blocks"]:
        wanted = manifest["wanted_types"][block["block"]]
        assert block["types"][wanted] == 1  # ffn_down
    low = [b["bits_per_weight"] for b in manifest["blocks"] if manifest["plan"][b["block"]] == 2]
    high = [b["bits_per_weight"] for b in manifest["blocks"] if manifest["plan"][b["block"]] == 4]
    assert max(low) < min(high)  # the fallbacks keep the order of the plan's widths
    assert min(low) > 2.5  # ... but a "2-bit" block of SmolLM2 is not 2 bits in GGUF


@pytest.mark.slow
def test_llama_cpp_and_lwq_agree_on_the_files_perplexity(exported):
    check = exported[0]["check"]
    assert check["chunks"] == 2 and check["n_ctx"] == 256
    assert abs(check["relative_difference"]) < 0.02
    assert 20 < check["llama_cpp"] < 1e4  # a working model, not noise (vocabulary 49 k)


@pytest.mark.slow
def test_quant_gguf_gives_the_weights_the_file_holds_bit_for_bit(exported):
    # a sweep with quant=gguf measures exactly what the export ships: ggml's own quantizer
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    manifest, out = exported
    backend = make_backend("gguf")
    tensors = {t.name: t for t in GGUFReader(str(out)).tensors}
    with safe_open(str(SMOLLM2 / "model.safetensors"), "pt") as weights:
        for block in (manifest["plan"].index(2), manifest["plan"].index(4)):
            linear = torch.nn.Linear(1536, 576, bias=False)
            linear.weight.data = weights.get_tensor(f"model.layers.{block}.mlp.down_proj.weight")
            backend.quantize(linear, manifest["plan"][block])
            stored = tensors[f"blk.{block}.ffn_down.weight"]
            from_file = torch.from_numpy(dequantize(stored.data, stored.tensor_type))
            assert stored.tensor_type.name.lower() == manifest["wanted_types"][block]
            assert torch.equal(linear.weight.data, from_file.reshape(576, 1536))


def _gguf_budget_run(*overrides: str):
    return compose_run(
        "model=smollm2-135m", "allocate.format=gguf", "allowed_bits=[2,4]", *overrides
    )


@pytest.mark.slow
def test_the_files_bits_and_bytes_are_the_ones_lwq_plans_with(exported):
    """allocate.format=gguf counts, from shapes alone, each block's bits per weight in the
    file and the file's tensor bytes (fallbacks, F32 norms, the F16 embedding)."""
    from gguf import GGUFReader

    from lwq.commands.budget import achieved
    from lwq.commands.preflight import model_config
    from lwq.modeling.blocks import find_blocks
    from lwq.modeling.load import meta_model
    from lwq.quant.cost import SizeTable

    manifest, out = exported
    run = _gguf_budget_run("budget=4.5")
    model = meta_model(model_config(run)[0])
    sizes = SizeTable(model, find_blocks(model), run.quant.backend)
    planned = achieved(run, sizes, tuple(manifest["plan"]))
    assert planned["block_bits_per_weight"] == [b["bits_per_weight"] for b in manifest["blocks"]]
    assert planned["bits_per_weight"] == manifest["block_bits_per_weight"]
    assert planned["bytes"] == sum(int(t.n_bytes) for t in GGUFReader(str(out)).tensors)


def _budget_export(tmp_path, name: str, *overrides: str) -> dict:
    """SmolLM2 exported at 4.6 GGUF bits per weight, planned on a cheap sensitivity table
    (one 64-token sequence), unchecked in llama.cpp; its manifest."""
    tools()
    if not (SMOLLM2 / "model.safetensors").is_file():
        missing(f"{SMOLLM2} is missing; run `make smollm2`")
    return run_export(
        _gguf_budget_run(
            "command=export",
            "budget=4.6",
            "calib.samples=1",
            "calib.seq_len=64",
            f"export.out={tmp_path / name}",
            "export.check=false",
            f"paths.results={tmp_path}",
            "tracking=none",
            *overrides,
        )
    )


@pytest.mark.slow
def test_a_budget_in_gguf_bits_exports_to_a_file_with_the_plans_bits(tmp_path):
    """The allocator plans SmolLM2 at 4.6 bits per weight of the GGUF file (a cheap
    sensitivity table: one 64-token sequence); the file holds exactly the plan's bits."""
    manifest = _budget_export(tmp_path, "budget.gguf")
    planned = manifest["plan_source"]["planned"]
    assert set(manifest["plan"]) == {2, 4}  # a real mixture, not one width
    assert manifest["file_bits_equal_plan"]
    assert manifest["block_bits_per_weight"] == planned["bits_per_weight"] <= 4.6
    # the next block raised to 4 bits would not fit: the budget is used, not wasted
    step = 8 * (2322432 - 1783296) / 106168320
    assert planned["bits_per_weight"] + step > 4.6


@pytest.mark.slow
def test_a_budget_over_linear_units_exports_to_a_file_with_the_plans_bits(tmp_path):
    """allocate.unit=linear on SmolLM2 in GGUF bits (a cheap sensitivity table): the plan
    mixes widths inside blocks and every block of the file holds the plan's bits."""
    manifest = _budget_export(tmp_path, "linear.gguf", "allocate.unit=linear")
    planned = manifest["plan_source"]["planned"]
    assert any(isinstance(b, list) for b in manifest["plan"])  # linears differ in a block
    assert manifest["file_bits_equal_plan"]
    assert manifest["block_bits_per_weight"] == planned["bits_per_weight"] <= 4.6
    mixed = next(w for w in manifest["wanted_types"] if isinstance(w, dict))
    assert set(mixed) == {
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    }


@pytest.mark.slow
def test_quant_gguf_with_llama_cpps_fallback_gives_the_fallen_back_tensors_too(exported):
    """SmolLM2's 576-wide o_proj cannot be q2_k: llama-quantize stores it as q4_0, and
    quant.settings.fallback=llama_cpp quantizes it so, bit for bit, with the file's bytes
    (o_proj: the converter permutes q_proj's and k_proj's rows for llama's rotary layout)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    manifest, out = exported
    refusing, falling = make_backend("gguf"), make_backend("gguf", fallback="llama_cpp")
    tensors = {t.name: t for t in GGUFReader(str(out)).tensors}
    block = manifest["plan"].index(2)
    with safe_open(str(SMOLLM2 / "model.safetensors"), "pt") as weights:
        linear = torch.nn.Linear(576, 576, bias=False)
        linear.weight.data = weights.get_tensor(f"model.layers.{block}.self_attn.o_proj.weight")
    with pytest.raises(LwqError, match="fallback=llama_cpp"):
        refusing.weight_bytes(linear, 2)
    stored = tensors[f"blk.{block}.attn_output.weight"]
    assert stored.tensor_type.name.lower() == "q4_0"
    assert falling.weight_bytes(linear, 2) == int(stored.n_bytes)
    falling.quantize(linear, 2)
    from_file = torch.from_numpy(dequantize(stored.data, stored.tensor_type))
    assert torch.equal(linear.weight.data, from_file.reshape(576, 576))
