"""Hydra multiruns through submitit's local launcher (what SLURM runs, on this machine):
jobs share one results tree, each job's records are complete, a failing job is reported
and the others finish."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from tests.conftest import REF_MODEL, ROOT, records
from tests.shrunk import shrunk_model

pytestmark = pytest.mark.slow  # each job is a process that imports torch


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("shrunk")
    tokenizer = AutoTokenizer.from_pretrained(REF_MODEL)
    shrunk_model("llama", vocab_size=len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _multirun(tmp_path, model_dir, *sweeps: str) -> subprocess.CompletedProcess:
    overrides = [
        f"model.path={model_dir}",
        "model.name=shrunk",
        "model.max_length=128",
        "calib.samples=2",
        "calib.seq_len=32",
        "eval=dummy",  # numbers from the weights (lwq.evaluation.dummy): no lm-eval per job
        "eval.limit=1",
        "eval.chunk_chars=600",
        "sweep.fractions=[0,1]",
        "tracking=none",
        f"paths.results={tmp_path / 'results'}",
    ]
    return subprocess.run(
        [sys.executable, "run.py", "-m", "hydra/launcher=local", *sweeps, *overrides],
        cwd=ROOT,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_two_jobs_through_the_submitit_launcher_write_complete_distinct_records(
    tmp_path, model_dir
):
    proc = _multirun(tmp_path, model_dir, "metric=ldi,zd")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Submitit 'local' sweep" in proc.stdout + proc.stderr
    written = records(tmp_path, "shrunk")
    by_metric = {m: [r for r in written if r.get("metric") == m] for m in ("ldi", "zd")}
    for metric, points in by_metric.items():
        assert sorted(r["k"] for r in points) == [0, 4], metric  # every point of each job
    assert len({r["sweep_id"] for r in by_metric["ldi"] + by_metric["zd"]}) == 2
    keys = [r["point_key"] for r in written]
    assert len(keys) == len(set(keys)) == 5  # the shared reference once
    evaluated = [r for r in written if "reused_from" not in r]
    assert len({r["plan_key"] for r in evaluated}) == len(evaluated)  # each plan once


def test_a_failing_job_is_reported_and_the_others_finish(tmp_path, model_dir):
    proc = _multirun(tmp_path, model_dir, "sweep.low=1,3")  # rtn cannot do 1 bit
    assert proc.returncode != 0
    assert "cannot do 1 bits" in proc.stderr
    written = records(tmp_path, "shrunk")
    assert sorted(r["k"] for r in written if r["kind"] == "quantized") == [0, 4]
    assert {r["low"] for r in written if r["kind"] == "quantized"} == {3}
