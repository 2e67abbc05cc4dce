"""lwq on a real single-node SLURM cluster (tools/slurm_cluster.py, with slurmdbd): a batch
job is seen by squeue and sacct; a multirun through `hydra/launcher=slurm` runs as one job
array that records every point once; `scontrol requeue` of a running sweep stops it (the
stop line), SLURM starts it again and its records equal an uninterrupted run's.

The session's fixture starts the cluster (root; the packages are installed if missing) and
stops it at the end, also when a test fails, then checks that no SLURM, munge or MariaDB
process is left. Under CI=true a cluster that cannot start fails the tests; elsewhere they
are skipped. With a cluster already up in /tmp/lwq-slurm (`make slurm-up`) the tests use
it and leave it running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from lwq.results.store import RecordStore
from tests.conftest import ROOT, missing, records
from tools import slurm_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow]  # daemons, and run.py processes


@pytest.fixture(scope="session")
def slurm_env():
    """The environment of a client of the cluster in /tmp/lwq-slurm (SLURM_CONF)."""
    state = slurm_cluster.DEFAULT_STATE  # the one `make slurm-down` stops (.ci/run's trap)
    if slurm_cluster.running_daemons(state):  # a developer's `make slurm-up`: use it, keep it
        yield os.environ | slurm_cluster.client_env(state)
        return
    if os.geteuid() != 0:
        missing("the SLURM tests start daemons and need root (or run `make slurm-up` first)")
    try:
        env = slurm_cluster.up(state)  # stops what it started if it fails
    except Exception as error:
        missing(f"the throw-away SLURM cluster did not start: {error}")
    try:
        yield os.environ | env
    finally:
        slurm_cluster.down(state)  # its logs stay in the state dir until the next `up`
        left = slurm_cluster.slurm_processes()
        assert not left, f"SLURM, munge or MariaDB processes left after the session: {left}"


def _run(env, *argv: str, timeout: float = 60) -> str:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return proc.stdout


def _sacct_states(env, job_id: str) -> dict[str, str]:
    """{job or array task: state} as submitit asks sacct for them (steps left out)."""
    out = _run(env, "sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", job_id)
    rows = [line.split("|") for line in out.splitlines()[1:]]
    return {row[0]: row[1] for row in rows if "." not in row[0]}


def _wait_for_state(env, job_id: str, wanted: str, timeout_s: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = _sacct_states(env, job_id)
        if states and all(s == wanted for s in states.values()):
            return states
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} is not {wanted} after {timeout_s} s: {states}")


def test_a_batch_job_runs_and_squeue_and_sacct_see_it(slurm_env, tmp_path):
    out = tmp_path / "job.out"
    job_id = _run(
        slurm_env,
        "sbatch",
        "--parsable",
        f"--output={out}",
        "--wrap",
        "sleep 1; echo hello $SLURM_JOB_ID",
    ).strip()
    seen = _run(slurm_env, "squeue", "-h", "-t", "all", "-j", job_id, "-o", "%i %P %T")
    assert seen.split()[:2] == [job_id, "low"]  # the default partition
    assert _wait_for_state(slurm_env, job_id, "COMPLETED") == {job_id: "COMPLETED"}
    assert out.read_text().strip() == f"hello {job_id}"


def test_a_multirun_through_the_slurm_launcher_is_a_job_array_recording_every_point_once(
    slurm_env, tmp_path
):
    launcher = [
        "hydra/launcher=slurm",
        "hydra.launcher.partition=low",
        "hydra.launcher.gpus_per_node=null",  # no GRES on this node
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=20",
    ]
    sweep = [
        "metric=ldi,zd",
        "eval=dummy",  # numbers from the weights (lwq.evaluation.dummy): no lm-eval per job
        "eval.limit=1",
        "sweep.fractions=[0,0.5,1]",
        "calib.samples=2",
        "calib.seq_len=32",
        "tracking=none",
        f"paths.results={tmp_path / 'results'}",
    ]
    proc = subprocess.run(
        [sys.executable, "run.py", "-m", *launcher, *sweep],
        cwd=ROOT,
        env=slurm_env | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Submitit 'slurm' sweep" in proc.stdout + proc.stderr
    submitit = (tmp_path / "results" / "hydra").glob("multirun-*/.submitit/*")
    folders = [p.name for p in submitit if re.fullmatch(r"\d+_\d+", p.name)]  # <array>_<task>
    array_ids = {name.split("_")[0] for name in folders}
    assert len(folders) == 2 and len(array_ids) == 1, folders  # one array of two tasks
    (array_id,) = array_ids
    states = _wait_for_state(slurm_env, array_id, "COMPLETED")
    assert sorted(states) == [f"{array_id}_0", f"{array_id}_1"]

    written = records(tmp_path, "ref-tiny")
    keys = [r["point_key"] for r in written]
    assert len(keys) == len(set(keys)), "a point was recorded twice"
    for metric in ("ldi", "zd"):
        ks = sorted(r["k"] for r in written if r.get("metric") == metric)
        assert ks == [0, 6, 12], metric  # every point of each job
    assert [r["kind"] for r in written].count("reference") == 1


def _comparable(record: dict) -> tuple:
    return record["kind"], record.get("k"), record["plan_key"], record["eval"]


def test_scontrol_requeue_stops_a_running_sweep_which_resumes_to_the_uninterrupted_records(
    slurm_env, tmp_path
):
    sweep = [
        "metric=ldi",
        "eval.limit=2",  # the real perplexity (~2 s a point): time to requeue mid-sweep
        "eval.chunk_chars=1500",
        "sweep.fractions=[0,0.25,0.5,0.75,1]",
        "calib.samples=2",
        "calib.seq_len=32",
        "tracking=none",
    ]
    env = slurm_env | {"OMP_NUM_THREADS": "1"}
    reference = subprocess.Popen(  # the uninterrupted run, on this machine, meanwhile
        [sys.executable, "run.py", *sweep, f"paths.results={tmp_path / 'uninterrupted'}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    results = tmp_path / "results"
    launcher = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null",
                "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
                "hydra.launcher.timeout_min=20", "hydra.launcher.partition=low"]  # fmt: skip
    multirun = subprocess.Popen(
        [sys.executable, "run.py", "-m", *launcher, *sweep, f"paths.results={results}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    store = results / "ref-tiny" / "records.jsonl"
    deadline = time.monotonic() + 300
    while not (store.exists() and len(store.read_text().splitlines()) >= 2):  # mid-sweep
        assert multirun.poll() is None and time.monotonic() < deadline, multirun.stdout.read()
        time.sleep(0.1)
    (job_id,) = [p.name for p in results.glob("hydra/multirun-*/.submitit/*") if p.name.isdigit()]
    _run(slurm_env, "scontrol", "requeue", job_id)
    launcher_output = multirun.communicate(timeout=600)[0]
    _wait_for_state(slurm_env, job_id, "COMPLETED", timeout_s=300)
    job = _run(slurm_env, "scontrol", "-o", "show", "job", job_id)
    assert "Restarts=1 " in job, job  # requeued once, by the requeue
    log = "".join(
        p.read_text() for p in results.glob(f"hydra/multirun-*/.submitit/{job_id}/*_log.*")
    )
    stops = [line for line in log.splitlines() if "stopped by SIGTERM" in line]
    assert len(stops) == 1 and "run the same command again to resume" in stops[0], log[-3000:]
    assert not list((results / "ref-tiny" / "claims").glob("*.claim"))  # all released

    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-3000:]
    expected = RecordStore(tmp_path / "uninterrupted" / "ref-tiny" / "records.jsonl").read()
    resumed = RecordStore(store).read()
    assert sorted(map(str, map(_comparable, resumed))) == sorted(
        map(str, map(_comparable, expected))
    )
    assert multirun.returncode == 0, launcher_output[-3000:]  # it waited for the requeued job
