"""The hand-written pipeline `make bench` compares lwq with gives lwq's numbers: a fresh
process that quantizes, saves and runs the lm_eval command line agrees with the sweep."""

from __future__ import annotations

import pytest

from bench.pipeline import bench_pipeline, overhead_parts
from tests.conftest import REF_MODEL


@pytest.mark.slow
def test_the_naive_pipeline_reproduces_the_sweeps_perplexity():
    result = bench_pipeline(
        [
            f"model.path={REF_MODEL}",
            "eval.limit=2",
            "eval.chunk_chars=1500",
            "calib.samples=4",
            "calib.seq_len=64",
        ],
        fractions="[0.5]",
    )
    assert result["points"] == 1 and len(result["naive_seconds_per_point"]) == 1
    assert result["max_relative_difference"] <= 1e-4, result
    assert result["agree"]
    once, points = result["once_a_sweep_seconds"], result["evaluations_seconds"]
    assert once > 0 and points > 0  # the scores and the load are paid once
    assert once + points == pytest.approx(result["in_process_seconds"], abs=0.15)


def test_the_overhead_splits_into_evaluations_and_what_a_sweep_pays_once():
    records = [{"seconds": 2.0}, {"seconds": 2.5, "quantize_seconds": 0.5}]
    parts = overhead_parts(records, in_process=7.0, bare=2.0)
    assert parts["evaluations_seconds"] == 5.0 and parts["once_a_sweep_seconds"] == 2.0
    assert parts["evaluations_over_bare_forwards"] == 0.25  # 5 s against 2 x 2 s
