"""Budgets no plan of `allowed_bits` can meet are refused by run.py before anything loads,
in one line with the arithmetic (average bits from the widths; bytes from the model's
shapes on the meta device)."""

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
        int, re.search(r"(\d+) fixed bytes.*= (\d+), at 4 bits = (\d+)", line).groups()
    )
    assert fixed < low < high and f"give budget_bytes in {low}..{high}" in line
    line = refused_by_run_py(capsys, MODEL, f"budget_bytes={high + 1}", "allowed_bits=[2,3,4]")
    assert "above the all-highest plan" in line
