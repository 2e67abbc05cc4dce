"""The hand-written pipeline `make bench` compares lwq with gives lwq's numbers: a fresh
process that quantizes, saves and runs the lm_eval command line agrees with the sweep."""

from __future__ import annotations

import pytest

from bench.pipeline import bench_pipeline
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
