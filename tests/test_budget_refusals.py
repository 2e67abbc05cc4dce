"""Budgets no plan of `allowed_bits` can meet are refused by run.py before anything loads,
in one line with the arithmetic (average bits from the widths; bytes, and bits per weight
in a target file format, from the model's shapes on the meta device)."""

from __future__ import annotations

import re

from tests.conftest import REF_MODEL, refused_by_run_py

MODEL = f"model.path={REF_MODEL}"


def test_average_bits_outside_the_allowed_widths_are_refused(capsys):
    line = refused_by_run_py(capsys, MODEL, "budget=1.5", "allowed_bits=[2,3,4]")
    assert "below the all-lowest plan" in line and "reachable" in line and "2..4" in line
    line = refused_by_run_py(capsys, MODEL, "budget=9", "allowed_bits=[2,4,8]")
    assert "above the all-highest plan" in line and "2..8" in line


def test_byte_budgets_outside_the_reachable_range_show_the_arithmetic(capsys):
    line = refused_by_run_py(capsys, MODEL, "budget_bytes=1000", "allowed_bits=[2,3,4]")
    assert "below the all-lowest plan" in line
    fixed, low, high = map(
        int, re.search(r"(\d+) fixed bytes.*at 2 bits = (\d+),.*at 4 bits = (\d+)", line).groups()
    )
    assert fixed < low < high and f"give budget_bytes in {low}..{high}" in line
    line = refused_by_run_py(capsys, MODEL, f"budget_bytes={high + 1}", "allowed_bits=[2,3,4]")
    assert "above the all-highest plan" in line


def test_a_budget_in_gguf_bits_is_refused_with_the_files_arithmetic(capsys):
    """SmolLM2's 576-wide inputs make llama.cpp store q2_k blocks mostly as q4_0: a "2-bit"
    block holds 4.03 bits per weight in the file, so 2.5 bits is out of reach."""
    line = refused_by_run_py(
        capsys, "model=smollm2-135m", "budget=2.5", "allocate.format=gguf", "allowed_bits=[2,4]"
    )
    assert "below the all-lowest plan" in line and "in the gguf file" in line
    assert "30 blocks x 1783296 bytes at 2 bits" in line and "4.0312..5.2500" in line
    line = refused_by_run_py(
        capsys, "model=smollm2-135m", "budget=5.3", "allocate.format=gguf", "allowed_bits=[2,4]"
    )
    assert "above the all-highest plan" in line


def test_a_gptq_file_budget_needs_the_gptq_backend(capsys):
    line = refused_by_run_py(capsys, MODEL, "budget=3", "allocate.format=gptq")
    assert "quant=gptq" in line


def test_finer_units_refuse_bad_ties_window_backends_and_miscounted_plan_files(capsys, tmp_path):
    line = refused_by_run_py(
        capsys, MODEL, "budget=3", "allocate.unit=linear", "allocate.ties=[[q_proj,qkv]]"
    )
    assert "names 1 of this model's linears" in line and "ties=[]" in line
    line = refused_by_run_py(capsys, MODEL, "budget=3", "allocate.unit=sublayer", "quant=slider")
    assert "use allocate.unit=block" in line
    plan = tmp_path / "plan.yaml"
    plan.write_text("bits: [4, [2, 4], 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]\n")
    line = refused_by_run_py(capsys, MODEL, f"plan_file={plan}")
    assert "block 1 2 widths; it has 7 linears" in line and "self_attn.q_proj" in line
