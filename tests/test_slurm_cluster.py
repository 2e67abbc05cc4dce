"""lwq on a real single-node SLURM cluster (tools/slurm_cluster.py, with slurmdbd): a batch
job is seen by squeue and sacct; a multirun through `hydra/launcher=slurm` runs as one job
array that records every point once; `scontrol requeue` of a running sweep stops it (the
stop line), SLURM starts it again and its records equal an uninterrupted run's;
`scancel --signal=TERM` stops a sweep job (not requeued) and a rerun completes it; a sweep
array pre-empted by a whole-node job in `high` is requeued and resumes; two multiruns of
overlapping experiments share one results tree (each point, plan, score and GPTQ block
once); one job with bad input fails in one line while the other records its points; and
the dry run of a SLURM multirun prints the sbatch settings (no cluster needed for that one).
The three stop tests compare against one uninterrupted run, made once for the session.

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


LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=low",
    "hydra.launcher.gpus_per_node=null",  # no GRES on this node
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=20",
]


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
        [sys.executable, "run.py", "-m", *LAUNCHER, *sweep],
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
    # the figures come from these records alone (both jobs' orderings in one plot)
    from lwq.figures import main as figures

    out = tmp_path / "figures"
    argv = ["--results", str(tmp_path / "results"), "--out", str(out), "--committed", ""]
    assert figures([*argv, "--only", "intersec", "--formats", "png"]) == 0
    assert (out / "intersec_ref-tiny.png").stat().st_size > 10_000


PPL_SWEEP = [
    "eval.limit=2",  # the real perplexity (~2 s a point): time to stop the job mid-sweep
    "eval.chunk_chars=1500",
    "calib.samples=2",
    "calib.seq_len=32",
    "tracking=none",
]
STOP_FRACTIONS = [0, 0.25, 0.5, 0.75, 1]  # the sweep the stop tests stop
STOP_SWEEP = [f"sweep.fractions=[{','.join(map(str, STOP_FRACTIONS))}]", *PPL_SWEEP]


def _start(env, *argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "run.py", *argv], cwd=ROOT, env=env | {"OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_for_lines(store, n: int, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not (store.exists() and len(store.read_text().splitlines()) >= n):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.1)


def _submitit_jobs(results) -> list[str]:
    """The job ids (a job's, or <array>_<task>) of the multiruns under `results`."""
    return sorted(p.name for p in results.glob("hydra/multirun-*/.submitit/*") if p.is_dir())


def _job_logs(results, job: str) -> str:
    return "".join(p.read_text() for p in results.glob(f"hydra/multirun-*/.submitit/{job}/*_log.*"))


def _whole_lines(store) -> None:
    """Every line of the records file is a whole JSON record (none half-written)."""
    import json

    for line in store.read_text().splitlines():
        json.loads(line)


def _same_records(store, expected: list[dict]) -> None:
    """The records in `store` are each point once, with the metrics of `expected`."""
    resumed = RecordStore(store).read()
    keys = [r["point_key"] for r in resumed]
    assert len(keys) == len(set(keys)), "a point was recorded twice"
    assert sorted(map(str, map(_comparable, resumed))) == sorted(
        map(str, map(_comparable, expected))
    )


def _comparable(record: dict) -> tuple:
    return record["kind"], record.get("k"), record["plan_key"], record["eval"]


@pytest.fixture(scope="session")
def uninterrupted(slurm_env, tmp_path_factory):
    """The records the stop tests must end with: STOP_SWEEP for ldi, then zd, run here
    without a stop, once for the session (in the background from the first test that asks,
    as each test ran its own before); `uninterrupted("ldi")` waits for ldi's only."""
    results = tmp_path_factory.mktemp("uninterrupted")
    with (results / "run.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "run.py", "-m", "metric=ldi,zd", *STOP_SWEEP,
             f"paths.results={results}"],
            cwd=ROOT, env=slurm_env | {"OMP_NUM_THREADS": "1"}, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    store = RecordStore(results / "ref-tiny" / "records.jsonl")

    def records(metric: str | None = None) -> list[dict]:
        deadline = time.monotonic() + 600
        while proc.poll() is None and not (metric and _swept(store, metric)):
            assert time.monotonic() < deadline, "the uninterrupted run takes over 10 minutes"
            time.sleep(0.5)
        assert proc.returncode in (None, 0), (results / "run.log").read_text()[-3000:]
        written = store.scan().records
        return [r for r in written if r["kind"] == "reference" or metric in (None, r["metric"])]

    yield records
    if proc.poll() is None:  # a test failed before it asked for every ordering
        proc.kill()
        proc.wait()


def _swept(store: RecordStore, metric: str) -> bool:
    """Every point of STOP_SWEEP for `metric`, and the reference, are in `store`."""
    written = store.scan().records
    kinds = [r["kind"] for r in written if r["kind"] == "reference" or r["metric"] == metric]
    return kinds.count("reference") == 1 and len(kinds) == 1 + len(STOP_FRACTIONS)


def test_scontrol_requeue_stops_a_running_sweep_which_resumes_to_the_uninterrupted_records(
    slurm_env, tmp_path, uninterrupted
):
    """`scontrol requeue <job>` of a running sweep: lwq gets SIGTERM and stops (its stop
    line), SLURM requeues the job once, it takes over its own claims and finishes, the
    multirun command waits for it and ends with 0, and the records equal an uninterrupted
    run's."""
    results = tmp_path / "results"
    multirun = _start(slurm_env, "-m", *LAUNCHER, "metric=ldi", *STOP_SWEEP,
                      f"paths.results={results}")  # fmt: skip
    store = results / "ref-tiny" / "records.jsonl"
    _wait_for_lines(store, 2, multirun)  # mid-sweep
    (job_id,) = _submitit_jobs(results)
    _run(slurm_env, "scontrol", "requeue", job_id)
    launcher_output = multirun.communicate(timeout=600)[0]
    _wait_for_state(slurm_env, job_id, "COMPLETED", timeout_s=300)
    job = _run(slurm_env, "scontrol", "-o", "show", "job", job_id)
    assert "Restarts=1 " in job, job  # requeued once, by the requeue
    log = _job_logs(results, job_id)
    stops = [line for line in log.splitlines() if "stopped by SIGTERM" in line]
    assert len(stops) == 1 and "run the same command again to resume" in stops[0], log[-3000:]
    assert not list((results / "ref-tiny" / "claims").glob("*.claim"))  # all released
    _whole_lines(store)
    _same_records(store, uninterrupted("ldi"))
    assert multirun.returncode == 0, launcher_output[-3000:]  # it waited for the requeued job


def test_scancel_signal_term_stops_a_sweep_job_which_a_rerun_completes(
    slurm_env, tmp_path, uninterrupted
):
    """`scancel --signal=TERM <job>` (no --batch/--full) reaches only the srun step: lwq
    stops with its stop line and exit code 3, the step and the job end FAILED with exit code
    3, and SLURM does not requeue it (Restarts=0; a signal is not a requeue). submitit then
    finds no result and the multirun command fails; the same multirun run again is a new job
    that takes up where the first stopped, and its records equal an uninterrupted run's."""
    results = tmp_path / "results"
    multirun = [*LAUNCHER, "metric=ldi", *STOP_SWEEP, f"paths.results={results}"]
    first = _start(slurm_env, "-m", *multirun)
    store = results / "ref-tiny" / "records.jsonl"
    _wait_for_lines(store, 2, first)  # mid-sweep
    (job_id,) = _submitit_jobs(results)
    _run(slurm_env, "scancel", "--signal=TERM", job_id)
    _wait_for_state(slurm_env, job_id, "FAILED")
    job = _run(slurm_env, "scontrol", "-o", "show", "job", job_id)
    assert "Restarts=0 " in job and "ExitCode=3:0" in job, job  # not requeued
    stops = [
        line for line in _job_logs(results, job_id).splitlines() if "stopped by SIGTERM" in line
    ]
    assert len(stops) == 1 and "run the same command again to resume" in stops[0]
    assert not list((results / "ref-tiny" / "claims").glob("*.claim"))  # all released
    _whole_lines(store)
    stopped_at = len(store.read_text().splitlines())
    assert 2 <= stopped_at < 6  # the reference and 5 points when whole

    # submitit polls sacct ever more rarely (2, 4, 8, 16, 32 s... after submitting) and then
    # waits 15 s for a result file: rerun meanwhile, as a user may
    again = _start(slurm_env, "-m", *multirun)
    first_output = first.communicate(timeout=300)[0]
    assert first.returncode == 1, first_output[-3000:]  # no result: submitit reports it
    assert "has not produced any output (state: FAILED)" in first_output
    last = first_output.strip().splitlines()[-2:]  # the job's error stream ends the traceback
    assert "stopped by SIGTERM" in last[0] and "Exited with exit code 3" in last[1], last
    again_output = again.communicate(timeout=300)[0]
    assert again.returncode == 0, again_output[-3000:]
    _same_records(store, uninterrupted("ldi"))


def test_a_sweep_array_preempted_by_a_whole_node_job_is_requeued_and_resumes(
    slurm_env, tmp_path, uninterrupted
):
    """Pre-emption: a two-task sweep array in `low`, then a `high` job that needs both
    cores. SLURM sends the jobs' own --signal first (submitit's USR2, thanks to
    preempt_send_user_signal) and submitit's handler catches it ('Caught signal SIGUSR2 on
    vm: this job is preempted.', 'Calling checkpoint method.'); SLURM requeues the tasks at
    once (PreemptMode=REQUEUE: 'STEP 14.0 ON vm CANCELLED ... DUE TO JOB REQUEUE', SIGCONT
    and SIGTERM to the step, not GraceTime later). What ends the step is a race between
    that SIGTERM and submitit's handler: submitit has run `scontrol requeue` ('Requeued job
    14_0 (3 remaining timeouts)') and exited (255; the SIGTERM is 'Bypassing signal SIGTERM'
    or kills the exiting Python: 'task 0: Terminated'), or lwq's handler, still in place,
    takes the SIGTERM (its stop line, exit code 3). Either way each task is
    REQUEUED once and runs again after the `high` job ('3 of 6 points already in ...'),
    every point is recorded once, the metrics equal an uninterrupted run's, and the
    multirun command ends with 0."""
    results = tmp_path / "results"
    multirun = _start(slurm_env, "-m", *LAUNCHER, "metric=ldi,zd", *STOP_SWEEP,
                      f"paths.results={results}")  # fmt: skip
    store = results / "ref-tiny" / "records.jsonl"
    _wait_for_lines(store, 3, multirun)  # both tasks mid-sweep
    tasks = [j for j in _submitit_jobs(results) if "_" in j]
    assert len(tasks) == 2, tasks
    array_id = tasks[0].split("_")[0]
    running = _run(slurm_env, "squeue", "-h", "-j", array_id, "-o", "%i %T")
    assert sorted(running.splitlines()) == [f"{task} RUNNING" for task in tasks], running
    high = _run(slurm_env, "sbatch", "--parsable", "-p", "high", "-c", "2",
                f"--output={tmp_path / 'high.out'}", "--wrap", "sleep 1").strip()  # fmt: skip
    output = multirun.communicate(timeout=300)[0]
    assert multirun.returncode == 0, output[-3000:]
    _wait_for_state(slurm_env, array_id, "COMPLETED")  # submitit has the results a bit before

    history = _run(slurm_env, "sacct", "-D", "-X", "--parsable2", "-o", "JobID,State",
                   "-j", f"{array_id},{high}").split()[1:]  # fmt: skip
    for task in tasks:  # pre-empted once (submitit's requeue), then done
        assert [h for h in history if h.startswith(f"{task}|")] == [
            f"{task}|REQUEUED",
            f"{task}|COMPLETED",
        ], history
    assert f"{high}|COMPLETED" in history
    for task in tasks:
        log = _job_logs(results, task)
        assert "Caught signal SIGUSR2 on" in log and "this job is preempted." in log, log[-3000:]
        # SLURM cancels the step for the requeue ~0.1 s after the USR2 (SIGCONT, SIGTERM),
        # while submitit's handler checkpoints (~0.08 s) and runs `scontrol requeue`: which
        # ends the step is a race. Seen here: submitit requeued and exited (255) and the
        # SIGTERM was bypassed, or killed the exiting Python ('task 0: Terminated'), or
        # lwq's handler took it (its stop line, exit code 3), with or without submitit's
        # 'Requeued job' first
        by_submitit = f"Requeued job {task} (3 remaining timeouts)" in log
        by_lwq = [line for line in log.splitlines() if line.startswith("stopped by SIGTERM")]
        assert by_submitit or by_lwq, log[-3000:]
        if by_lwq:
            assert len(by_lwq) == 1 and "run the same command again to resume" in by_lwq[0]
            assert "task 0: Exited with exit code 3" in log
        else:
            assert re.search(r"task 0: (Exited with exit code 255|Terminated)", log), log[-3000:]
        done = [line for line in log.splitlines() if line.startswith("submitit INFO")]
        assert sum("Job completed successfully" in line for line in done) == 1
        assert "points already in" in log  # the requeued task skipped what was recorded
        job = _run(slurm_env, "scontrol", "-o", "show", "job", task)
        assert "Restarts=1 " in job, job
    assert not list((results / "ref-tiny" / "claims").glob("*.claim"))
    _whole_lines(store)
    _same_records(store, uninterrupted())


# Loaded by every Python process of a test through PYTHONPATH (the SLURM jobs inherit the
# environment): logs each rename into the cache, so a test sees what was written how often.
LOG_CACHE_WRITES = """
import os, sys

def _log(event, args):
    if event == "os.rename" and "/cache/" in os.fsdecode(args[1]):
        with open(os.environ["LWQ_TEST_CACHE_WRITES"], "a") as log:
            log.write(os.fsdecode(args[1]) + "\\n")

sys.addaudithook(_log)
"""


def _logging_cache_writes(env, tmp_path) -> tuple[dict, object]:
    """(env whose Python processes log their renames into a cache, the log's path)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(LOG_CACHE_WRITES)
    log = tmp_path / "cache-writes.log"
    path = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    return env | {"PYTHONPATH": path, "LWQ_TEST_CACHE_WRITES": str(log)}, log


def test_two_multiruns_of_overlapping_experiments_share_one_results_tree(slurm_env, tmp_path):
    """Item 5 of the issue: `24bits` (zd) and, submitted at the same time, `24bits` and
    `4bit_plot` (zd) into one results tree: three array tasks on the node's two cores, two
    of them the same sweep. Its points are recorded once; the plan both experiments have
    (every block at 4 bits: k=0 of `24bits`, k=12 of `4bit_plot`) is evaluated once and
    reused; the score file and each GPTQ block file are written once (os.replace into the
    cache, logged by an audit hook in every process)."""
    env, log = _logging_cache_writes(slurm_env, tmp_path)
    results = tmp_path / "results"
    small = ["sweep.fractions=[0,0.5,1]", "eval=dummy", "eval.limit=1", "calib.samples=2",
             "calib.seq_len=32", "tracking=none", f"paths.results={results}"]  # fmt: skip
    runs = [  # its own Hydra sweep dir each: two multiruns in one second would share one
        _start(env, "-m", *LAUNCHER, *small, "experiment=24bits_ref-tiny", "ordering=zd",
               f"hydra.sweep.dir={results}/hydra/multirun-a"),
        _start(env, "-m", *LAUNCHER, *small, "experiment=24bits_ref-tiny,4bit_plot_ref-tiny",
               "ordering=zd", f"hydra.sweep.dir={results}/hydra/multirun-b"),
    ]  # fmt: skip
    for run in runs:
        output = run.communicate(timeout=600)[0]
        assert run.returncode == 0, output[-3000:]
    jobs = _submitit_jobs(results)  # a job, and an array (its folder and its tasks')
    tasks = [j for j in jobs if "_" in j]
    assert len(tasks) == 2 and len(set(jobs) - {t.split("_")[0] for t in tasks}) == 3, jobs

    written = RecordStore(results / "ref-tiny" / "records.jsonl").read()
    keys = [r["point_key"] for r in written]
    assert len(keys) == len(set(keys)), "a point was recorded twice"
    assert [r["kind"] for r in written].count("reference") == 1
    quantized = [r for r in written if r["kind"] == "quantized"]
    for sweep in [(4, 2, "zd"), (8, 4, "zd")]:
        ks = sorted(r["k"] for r in quantized if (r["high"], r["low"], r["metric"]) == sweep)
        assert ks == [0, 6, 12], sweep  # every point, once, though two jobs swept 4->2
    evaluated = [r["plan_key"] for r in quantized if "reused_from" not in r]
    assert len(evaluated) == len(set(evaluated)), "a plan was evaluated twice"
    assert {r["plan_key"] for r in quantized} == set(evaluated)  # the others reuse them
    assert len(quantized) - len(evaluated) == 1  # all at 4 bits: two points, one evaluation

    renames = log.read_text().splitlines()
    scores = [p for p in renames if "/cache/scores/" in p]
    blocks = [p for p in renames if re.search(r"/variants-\w+/\d+\.safetensors$", p)]
    assert len(scores) == 1 and os.path.basename(scores[0]).startswith("zd-"), scores
    assert len({os.path.dirname(p) for p in blocks}) == 3  # GPTQ at 2, 4 and 8 bits
    assert len(blocks) == 3 * 12  # every block of each width (ref-tiny has 12)
    for path in scores + blocks:
        assert renames.count(path) == 1, f"{path} was written {renames.count(path)} times"


def test_a_job_with_bad_input_fails_in_one_line_and_the_other_job_records_its_points(
    slurm_env, tmp_path
):
    """`sweep.low=1,3` through the SLURM launcher: the sweep with 1 bit (rtn cannot do it)
    fails with one line in its job's log (`job failed (...): ...`); submitit saves the
    error as that task's result, so SLURM shows both tasks COMPLETED (0:0); the other task
    records its points, and the multirun command fails at its end (exit code 1): Hydra
    re-raises the saved error, a traceback ending in `JobFailed: <overrides>: <error>`."""
    results = tmp_path / "results"
    sweep = ["sweep.low=1,3", "eval=dummy", "eval.limit=1", "sweep.fractions=[0,1]",
             "calib.samples=2", "calib.seq_len=32", "tracking=none",
             f"paths.results={results}"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "run.py", "-m", *LAUNCHER, *sweep], cwd=ROOT,
        env=slurm_env | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert re.search(r"^JobFailed: sweep.low=1 .*cannot do 1 bits", proc.stderr, re.M), proc.stderr
    tasks = [j for j in _submitit_jobs(results) if "_" in j]
    array_id = tasks[0].split("_")[0]
    deadline = time.monotonic() + 60
    while set((states := _sacct_states(slurm_env, array_id)).values()) - {"COMPLETED", "FAILED"}:
        assert time.monotonic() < deadline, states
        time.sleep(0.2)
    # submitit catches lwq's JobFailed and saves it as the task's result: SLURM sees both
    # tasks COMPLETED (exit 0); the launcher raises it when it collects the results
    assert sorted(states.values()) == ["COMPLETED", "COMPLETED"], states
    (failed,) = [task for task in tasks if "job failed (" in _job_logs(results, task)]
    log = _job_logs(results, failed)
    lines = [line for line in log.splitlines() if line.startswith("job failed (")]
    assert len(lines) == 1 and "sweep.low=1" in lines[0] and "cannot do 1 bits" in lines[0], log
    written = records(tmp_path, "ref-tiny")
    assert sorted(r["k"] for r in written if r["kind"] == "quantized") == [0, 12]
    assert {r["low"] for r in written if r["kind"] == "quantized"} == {3}


def test_a_dry_multirun_through_the_slurm_launcher_prints_the_sbatch_settings(tmp_path):
    """`-m dry_run=true hydra/launcher=slurm`: the #SBATCH lines submitit would write for the
    job array (made by submitit itself; the same lines as a real submission's
    <job>_submission.sh, log paths aside) and the requeue settings, then each job's dry run
    here with Hydra's basic launcher; nothing is submitted to SLURM."""
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "run.py", "-m", *LAUNCHER, "hydra.launcher.setup=[module load cuda]",
         "metric=ldi,zd", "dry_run=true", "sweep.fractions=[0,1]", f"paths.results={results}"],
        cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    start = out.index("sbatch settings of the 2 jobs (hydra/launcher=slurm):")
    assert [line.strip() for line in out[start + 1 : start + 14]] == [
        "#SBATCH --array=0-1%2",  # array_parallelism 16, two jobs
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --job-name=run",
        "#SBATCH --mem=2GB",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --open-mode=append",
        "#SBATCH --partition=low",
        "#SBATCH --signal=USR2@120",  # signal_delay_s
        "#SBATCH --time=20",
        "#SBATCH --wckey=submitit",
        "(setup) module load cuda",
        "requeue: SLURM's (pre-emption, scontrol requeue); submitit requeues a job on its "
        "--signal up to 3 times (USR2 120 s before the time limit, or on pre-emption)",
    ]
    assert "Launching 2 jobs locally" in proc.stderr + proc.stdout
    assert sum(line.startswith("dry run: model=ref-tiny") for line in out) == 2
    assert not list(results.glob("hydra/multirun-*/.submitit"))  # no cluster job
