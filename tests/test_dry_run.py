"""`dry_run=true`: every point, plan and exact size of a sweep without loading weights,
offline; the sizes are the bytes a real run records."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from lwq.commands import run
from lwq.commands.sweep import run_sweep
from lwq.errors import LwqError
from tests.conftest import REF_MODEL, compose_config, records, small_run_overrides
from tests.shrunk import shrunk_from_conf


def test_a_13b_sweep_is_planned_offline_from_the_conf_shapes(tmp_path, capsys):
    out = run(compose_config("model=llama2-13b", f"paths.results={tmp_path}", "dry_run=true"))
    assert out["blocks"] == 40 and "conf/model/llama2-13b.yaml" in out["source"]
    reference = out["points"][0]
    assert reference.point.kind == "reference" and reference.weight_bytes == 26_031_728_640
    assert [p.point.k for p in out["points"][1:]] == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    sizes = [p.weight_bytes for p in out["points"][1:]]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0] / 1.7
    assert out["weights_gb"] == pytest.approx(26.03, abs=0.01) and out["to_evaluate"] == 12
    printed = capsys.readouterr().out
    assert "ldi k=20" in printed and "26.032 GB" in printed and "not scored yet" in printed


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["rtn", "hqq", "gptq"])
def test_the_sizes_are_the_bytes_a_real_run_records(tmp_path, quant):
    """A shrunk copy of Mistral-7B's layout (GQA, untied head): dry run, then the real sweep."""
    model_dir = tmp_path / "model"
    tokenizer = AutoTokenizer.from_pretrained(REF_MODEL)
    shrunk_from_conf("conf/model/mistral-7b.yaml", vocab_size=len(tokenizer)).save_pretrained(
        model_dir
    )
    tokenizer.save_pretrained(model_dir)
    overrides = [
        *small_run_overrides(tmp_path),
        f"model.path={model_dir}",
        "model.name=shrunk",
        f"quant={quant}",
        "quant.settings.group_size=32",
        "sweep.fractions=[0,0.5,1]",
    ]
    planned = run(compose_config(*overrides, "dry_run=true"))
    assert "config.json" in planned["source"]
    run_sweep(compose_config(*overrides))
    recorded = {r["point_key"]: r for r in records(tmp_path, "shrunk")}
    for p in planned["points"]:
        if p.point.kind != "reference":
            assert recorded[p.point.key]["weight_bytes"] == p.weight_bytes, p.point.label
            assert recorded[p.point.key]["bits_per_weight"] == pytest.approx(p.bits_per_weight)
    again = run(compose_config(*overrides, "dry_run=true"))  # now scored and recorded
    assert all(p.recorded and p.ranked for p in again["points"])
    assert again["seconds_estimate"] is not None


def test_only_a_sweep_can_be_dry_run(tmp_path):
    with pytest.raises(LwqError, match="dry_run=true plans a sweep"):
        run(compose_config(f"paths.results={tmp_path}", "dry_run=true", "command=compare"))


def test_the_dry_run_states_a_file_budget_and_refuses_one_out_of_reach(tmp_path, capsys):
    """ref-tiny's 128-wide rows make llama.cpp store q2_k as q4_0: 4.5..5.5 GGUF bits per
    weight with [2, 4]. A budget inside is stated in the file's bytes; outside, refused."""
    common = (f"model.path={REF_MODEL}", f"paths.results={tmp_path}", "dry_run=true")
    gguf = ("allocate.format=gguf", "allowed_bits=[2,4]")
    run(compose_config(*common, *gguf, "budget=5"))
    weights = 2359296  # the 12 blocks' linear weights, as the refusal line counts them
    assert f"budget: 5 bits per weight in the gguf file = {5 * weights // 8} bytes" in (
        capsys.readouterr().out
    )
    with pytest.raises(LwqError, match=r"4\.5000\.\.5\.5000"):
        run(compose_config(*common, *gguf, "budget=4"))


def test_the_dry_run_counts_the_units_a_finer_table_measures(tmp_path, capsys):
    common = (f"model.path={REF_MODEL}", f"paths.results={tmp_path}", "dry_run=true")
    run(compose_config(*common, "budget=3", "allocate.unit=linear", "allowed_bits=[2,4]"))
    assert "allocation units: 84 (linear) x 2 widths = 168 single-unit KL" in (
        capsys.readouterr().out
    )
    gptq = ("quant=gptq", "allocate.format=gptq", "allocate.unit=linear", "allowed_bits=[2,4]")
    run(compose_config(*common, *gptq, "budget=3"))
    out = capsys.readouterr().out
    assert "48 (linear, tied gate_proj+up_proj, q_proj+k_proj+v_proj) x 2 widths = 96" in out
    # GPTQ's mixed blocks: 32 x 256 x 128 float32 = 4.2 MB a block; 5 MB keeps one of 11
    assert "inputs are 2 MB (32 x 256 x 128 bfloat16)" in out and "keeps 11 of 11" in out
    small = ("model.dtype=float32", "eval.reuse_memory=0.005")
    run(compose_config(*common, *gptq, "budget=3", *small))
    assert "4 MB (32 x 256 x 128 float32); eval.reuse_memory=0.005 GB keeps 1 of 11" in (
        capsys.readouterr().out
    )
    run(compose_config(*common, "budget=3", "allocate.unit=sublayer", "allowed_bits=[2,4]"))
    assert "allocation units: 24 (sublayer) x 2 widths = 48" in capsys.readouterr().out


def test_the_dry_run_says_a_searched_plan_comes_from_the_sweep(tmp_path, capsys):
    """Its plan needs the model, so the budget line names the search, not a missing table."""
    common = (f"model.path={REF_MODEL}", f"paths.results={tmp_path}", "dry_run=true", "budget=3")
    run(compose_config(*common, "allocate.method=search"))
    out = capsys.readouterr().out
    assert "the plan is the search's, found by the sweep" in out and "not cached" not in out
    run(compose_config(*common))
    assert "the plan follows from the sensitivity table (not cached yet)" in capsys.readouterr().out
