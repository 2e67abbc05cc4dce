"""`allocate.method=search` on ref-tiny: the budget's point is the search's plan, started
from the DP plan, within the budget, never worse than its start on the calibration KL, its
recorded KL the one an independent measurement gives; a rerun reads the cached search;
and bad search settings are refused before anything loads."""

from __future__ import annotations

import json

import pytest

from lwq.commands.sweep import run_sweep
from tests.conftest import compose_config, records, refused_by_run_py, small_run_overrides

SEARCH = [
    "budget=3",
    "allowed_bits=[2,4,8]",
    "allocate.method=search",
    "allocate.search.generations=2",
    "allocate.search.offspring=4",
    "allocate.search.schedule=[[64,2],[256,1]]",
    "sweep.fractions=[0]",
]


@pytest.mark.slow
def test_a_searched_plan_is_recorded_within_the_budget_and_cached(tmp_path, capsys):
    run = compose_config(*small_run_overrides(tmp_path), *SEARCH)
    run_sweep(run)
    (point,) = [r for r in records(tmp_path) if r["kind"] == "allocated"]
    facts = point["search"]
    assert point["allocate_method"] == "search" and point["plan"] == facts["plan"]
    assert sum(point["plan"]) <= 3 * len(point["plan"])  # the budget in block-bits
    assert facts["start"] != [] and len(facts["fitness_calls"]) == 2
    assert facts["calibration_kl"] <= facts["start_calibration_kl"]  # elitism: never worse
    assert facts["blocks_skipped"] > 0  # children start where they differ from a parent
    cached = list((tmp_path / "results" / "cache" / "search").glob("search-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["plan"] == facts["plan"]
    # the same command again: the search is read, not run (its seconds would change)
    again = compose_config(*small_run_overrides(tmp_path), *SEARCH, "eval.limit=2")
    run_sweep(again)
    second = [r for r in records(tmp_path) if r["kind"] == "allocated" and r is not point]
    assert all(r["search"] == facts for r in second)


def test_bad_search_settings_are_refused_before_loading(capsys):
    line = refused_by_run_py(
        capsys, "budget=3", "allocate.method=search", "allocate.search.schedule=[[99999999,1]]"
    )
    assert "calibration tokens" in line and "raise calib.samples" in line
    line = refused_by_run_py(capsys, "allocate.method=evolve")
    assert "allocate.method=evolve is not known" in line
    line = refused_by_run_py(
        capsys, "budget=3", "allocate.method=search", "allocate.search.offspring=0"
    )
    assert "offspring" in line


@pytest.mark.slow
def test_the_search_runs_over_sublayer_units_and_records_the_models_plan(tmp_path, capsys):
    """At allocate.unit=sublayer the search moves attention and MLP widths apart: the
    record's unit plan is the search's, its plan the blocks' per-linear widths of it, and
    the weighted nominal bits stay within the budget."""
    run = compose_config(*small_run_overrides(tmp_path), *SEARCH, "allocate.unit=sublayer")
    run_sweep(run)
    (point,) = [r for r in records(tmp_path) if r["kind"] == "allocated"]
    facts = point["search"]
    assert point["unit"] == "sublayer" and point["unit_plan"] == facts["plan"]
    assert len(facts["plan"]) == 2 * point["n_blocks"]  # attention and MLP of every block
    for i, entry in enumerate(point["plan"]):
        attention, mlp = facts["plan"][2 * i], facts["plan"][2 * i + 1]
        assert entry == attention if attention == mlp else entry == [attention] * 4 + [mlp] * 3
    assert point["avg_bits"] <= 3 + 1e-9
    assert facts["calibration_kl"] <= facts["start_calibration_kl"]
    assert point["damage"]["predicted_kl"] == pytest.approx(point["predicted_sensitivity"])
