"""Reliability of whole sweeps (run.py in separate processes, as on a cluster): records
survive SIGKILL at random moments, concurrent sweeps share points without evaluating any
twice, a dead process's claim is taken over, SIGTERM stops cleanly, failed points are
recorded and retried, and the same command gives the same records in two fresh directories.

The sweeps evaluate with `eval=dummy` (numbers from a hash of the installed weights,
lwq.evaluation.dummy): a point takes milliseconds, and a resumed sweep that installed a
different plan or lost a number still differs from the uninterrupted one. The killed
processes are forked from a server that imported lwq once (multiprocessing's forkserver)
and run run.py as `python run.py` does: real processes, signals and exit codes, without
paying ~8 s of CPU for imports in each. The uninterrupted reference is a real `python run.py`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lwq.commands.sweep import run_sweep
from lwq.errors import PointsFailed
from lwq.results.store import RecordStore
from tests.conftest import REF_MODEL, ROOT, compose_config

# Not marked slow: with the dummy evaluation the whole file takes about a minute, and
# these are the contracts (resume, stop, claims) `make test-fast` must keep.

SWEEP = [
    f"model.path={REF_MODEL}",
    "tracking=none",
    "eval=dummy",
    "sweep.fractions=null",
    f"sweep.blocks=[{','.join(str(k) for k in range(13))}]",  # every k: room for 5 kills
    "eval.limit=2",
    "eval.chunk_chars=1500",
    "calib.samples=4",
    "calib.seq_len=64",
]
POINTS = 14  # the reference and k = 0..12
KILL_WITHIN = 0.06  # seconds after a claim; a point takes ~0.04 s with eval=dummy
VOLATILE = ("time", "checksum")


def _volatile(key: str) -> bool:
    """Times and memory differ between runs: every `*seconds` and `*_memory` field."""
    return key in VOLATILE or key.endswith("seconds") or key.endswith("_memory")


FORKS = multiprocessing.get_context("forkserver")
FORKS.set_forkserver_preload(["lwq.commands", "run"])  # what `python run.py` imports


def _run_py(argv: list[str], stderr: str) -> None:
    """`python run.py <argv>` in a forked process: stdout dropped, stderr to a file, the
    exit code run.py gives (its sys.exit becomes the process's exit code)."""
    import torch

    torch.set_num_threads(1)  # two sweeps at once on two cores
    os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.chdir(ROOT)
    sys.argv = ["run.py", *argv]
    runpy.run_path(str(ROOT / "run.py"), run_name="__main__")


class Sweep:
    """One sweep of SWEEP in a forked process (see `_run_py`)."""

    def __init__(self, results: Path) -> None:
        self.stderr_path = results.parent / f"stderr-{time.monotonic_ns()}.txt"
        results.parent.mkdir(parents=True, exist_ok=True)
        argv = [*SWEEP, f"paths.results={results}"]
        self.process = FORKS.Process(target=_run_py, args=(argv, str(self.stderr_path)))
        self.process.start()

    def running(self) -> bool:
        return self.process.is_alive()

    def send_signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def wait(self, timeout: float = 900) -> int | None:
        self.process.join(timeout)
        return self.returncode

    @property
    def returncode(self) -> int | None:
        """run.py's exit code, -N when signal N killed the process, None while it runs."""
        return self.process.exitcode

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()


def _finish(results: Path) -> Sweep:
    sweep = Sweep(results)
    sweep.wait()
    return sweep


def _store(results: Path) -> RecordStore:
    return RecordStore(results / "ref-tiny" / "records.jsonl")


def _comparable(record: dict) -> dict:
    """A record without what legitimately differs between runs: times, memory, paths."""
    out = {k: v for k, v in record.items() if not _volatile(k)}
    out["config"] = {k: v for k, v in record["config"].items() if k != "paths"}
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, dict]:
    """The sweep's records from `python run.py` itself, uninterrupted."""
    results = tmp_path_factory.mktemp("uninterrupted") / "results"
    done = subprocess.run(
        [sys.executable, "run.py", *SWEEP, f"paths.results={results}"],
        cwd=ROOT,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {r["point_key"]: r for r in _store(results).read()}


def _wait_for_a_claim(results: Path, process: Sweep, seen: set) -> bool:
    """Until the process claims a point it did not claim before (False if it ended).
    Only point claims count: the claim of a point's plan is taken with it."""
    claims = results / "ref-tiny" / "claims"
    while process.running():
        now = {p.name for p in claims.glob("*.claim")} if claims.is_dir() else set()
        new = {name for name in now - seen if _is_point_claim(name)}
        if new:
            seen |= new
            return True
        time.sleep(0.02)
    return False


def _is_point_claim(name: str) -> bool:
    return not name.startswith("plan-")  # lwq.results.keys.plan_key


def test_sigkill_at_random_moments_loses_nothing_and_changes_no_number(tmp_path, uninterrupted):
    results, rng, kills, seen = tmp_path / "results", random.Random(7), 0, set()
    while kills < 5:
        process = Sweep(results)
        if _wait_for_a_claim(results, process, seen):
            time.sleep(rng.uniform(0.0, KILL_WITHIN))  # mid-point or its record
            process.send_signal(signal.SIGKILL)
            kills += process.wait() == -signal.SIGKILL
        else:
            pytest.fail(f"the sweep ended before kill {kills + 1}: {process.stderr}")
    for _ in range(3):
        if _finish(results).returncode == 0:
            break
    store = _store(results)
    records = store.read()
    keys = [r["point_key"] for r in records]
    assert sorted(keys) == sorted(uninterrupted) and len(keys) == len(set(keys)) == POINTS
    for record in records:
        assert _comparable(record) == _comparable(uninterrupted[record["point_key"]])
    assert kills == 5


def test_two_sweeps_at_once_record_every_point_exactly_once(tmp_path, uninterrupted):
    results = tmp_path / "results"
    first, second = Sweep(results), Sweep(results)
    assert first.wait() == 0 and second.wait() == 0
    records = _store(results).read()
    keys = [r["point_key"] for r in records]
    assert sorted(keys) == sorted(uninterrupted) and len(keys) == POINTS
    assert _store(results).scan().damaged == []


def test_the_claim_of_a_killed_process_is_taken_over(tmp_path, uninterrupted):
    results = tmp_path / "results"
    owner, seen = Sweep(results), set()
    assert _wait_for_a_claim(results, owner, seen)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    (claimed,) = seen
    assert (results / "ref-tiny" / "claims" / claimed).exists()  # left behind by the dead
    assert _finish(results).returncode == 0
    keys = [r["point_key"] for r in _store(results).read()]
    assert claimed.removesuffix(".claim") in keys
    assert sorted(keys) == sorted(uninterrupted)
    assert not list((results / "ref-tiny" / "claims").glob("*.claim"))


def test_sigterm_stops_cleanly_and_a_rerun_completes(tmp_path, uninterrupted):
    results, seen = tmp_path / "results", set()
    process = Sweep(results)
    assert _wait_for_a_claim(results, process, seen)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 3, process.stderr
    stderr = process.stderr
    lines = [line for line in stderr.splitlines() if line.startswith("stopped by")]
    assert len(lines) == 1 and "run the same command again to resume" in lines[0], stderr
    recorded = len(_store(results).done_keys())
    assert f"{recorded} of {POINTS} points are in" in lines[0]
    assert not list((results / "ref-tiny" / "claims").glob("*.claim"))  # released
    assert _store(results).scan().damaged == []
    assert _finish(results).returncode == 0
    assert sorted(_store(results).done_keys()) == sorted(uninterrupted)


def test_a_record_cut_mid_object_is_redone_alone(tmp_path, uninterrupted):
    results = tmp_path / "results"
    assert _finish(results).returncode == 0
    path = _store(results).path
    whole = path.read_bytes()
    last = json.loads(whole.splitlines()[-1])
    cut = whole.rindex(b'"eval": {')  # inside the last record's nested metrics
    path.write_bytes(whole[: cut + 20])
    rerun = _finish(results)
    assert rerun.returncode == 0 and f"{path}:{POINTS} is a damaged record" in rerun.stderr
    records = _store(results).read()
    assert [r["point_key"] for r in records][-1] == last["point_key"]
    assert len(records) == POINTS  # only that point was evaluated again


def test_the_same_command_gives_the_same_records_in_a_fresh_directory(tmp_path, uninterrupted):
    results = tmp_path / "results"
    assert _finish(results).returncode == 0
    again = {r["point_key"]: r for r in _store(results).read()}
    assert again.keys() == uninterrupted.keys()
    for key, record in again.items():
        assert _comparable(record) == _comparable(uninterrupted[key])
    scores = sorted((results / "cache" / "scores").glob("*.json"))
    assert scores and all(json.loads(p.read_text())["values"] for p in scores)


def test_a_failing_point_is_recorded_the_sweep_goes_on_and_a_rerun_retries(tmp_path, monkeypatch):
    from lwq.evaluation.suite import Suite

    evaluate, calls = Suite.evaluate, []

    def flaky(self, model, tokenizer, **options):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return evaluate(self, model, tokenizer, **options)

    monkeypatch.setattr(Suite, "evaluate", flaky)
    run = compose_config(*SWEEP, f"paths.results={tmp_path / 'results'}")
    with pytest.raises(PointsFailed, match=f"1 of {POINTS} points failed"):
        run_sweep(run)
    store = _store(tmp_path / "results")
    failed = [r for r in store.read() if r.get("status") == "failed"]
    assert len(failed) == 1 and failed[0]["error"].startswith("RuntimeError: CUDA out of memory")
    assert len(store.done_keys()) == POINTS - 1
    written = run_sweep(run)  # the rerun evaluates the failed point only
    assert [r["point_key"] for r in written] == [failed[0]["point_key"]]
    assert len(store.done_keys()) == POINTS


def test_records_name_their_provenance(uninterrupted):
    record = next(iter(uninterrupted.values()))
    assert record["seed"] == 0 and set(record["code"]) == {"commit", "dirty"}
    assert {"torch", "transformers", "lm-eval"} <= set(record["versions"])
    assert record["weights_sha256"] == {
        "model.safetensors": json.loads((REF_MODEL / "card.json").read_text())["weights_sha256"]
    }
    assert "ref-heldout" in record["data_sha256"] and "ref-calib" in record["data_sha256"]


def test_the_dummy_evaluation_tells_every_plan_apart(uninterrupted):
    """What makes the comparisons above fail on a lost or changed point: each plan of the
    sweep has its own numbers (from its weights), in the fields a real text task writes."""
    tasks = [r["eval"]["tasks"]["lwq_dummy_ref_heldout"] for r in uninterrupted.values()]
    assert len({t["byte_perplexity"] for t in tasks}) == POINTS
    fields = {"byte_perplexity", "word_perplexity", "bits_per_byte", "token_perplexity"}
    assert all(t.keys() == fields for t in tasks)
