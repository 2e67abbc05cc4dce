"""Claims on points and stopping on signals, the pieces that let several processes share
one results tree and a pre-empted job leave nothing half-done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lwq.claims import Claims
from lwq.commands.stopping import Stopped, StopSignals

HOLD = """
import sys, time
from lwq.claims import Claims
claims = Claims(sys.argv[1]).__enter__()
assert claims.claim("k1")
print("claimed", flush=True)
time.sleep(600)
"""


def test_one_process_holds_a_claim_until_it_releases_it(tmp_path):
    a, b = Claims(tmp_path), Claims(tmp_path)
    b.pid = a.pid + 1  # another process: same host, a pid that is alive (ours) won't do
    assert a.claim("p") and not a.claim("p")
    holder = json.loads((tmp_path / "p.claim").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == a.host
    a.release("p")
    assert b.claim("p")


def test_a_claim_of_a_killed_process_is_taken_over_once(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE)
    assert owner.stdout.readline().strip() == b"claimed"
    claims = Claims(tmp_path)
    assert not claims.claim("k1")  # its owner is alive
    owner.kill()
    owner.wait()
    assert claims.claim("k1")  # dead owner: taken over
    assert json.loads((tmp_path / "k1.claim").read_text())["pid"] == os.getpid()
    assert not Claims(tmp_path).claim("k1")  # and held now: its owner (us) is alive


def test_a_reused_pid_does_not_keep_a_dead_claim_alive(tmp_path):
    (tmp_path / "p.claim").write_text(
        json.dumps({"host": Claims(tmp_path).host, "pid": os.getpid(), "start": "0"})
    )
    assert Claims(tmp_path).claim("p")  # our pid, but not the process that claimed


def test_another_hosts_claim_lives_while_its_heartbeat_does(tmp_path):
    path = tmp_path / "p.claim"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "start": "1"}))
    claims = Claims(tmp_path, lease=60)
    assert not claims.claim("p")
    old = time.time() - 120
    os.utime(path, (old, old))  # no heartbeat for two minutes
    assert claims.claim("p")


def test_the_heartbeat_touches_held_claims(tmp_path):
    with Claims(tmp_path, heartbeat=0.05) as claims:
        assert claims.claim("p")
        old = time.time() - 1000
        os.utime(tmp_path / "p.claim", (old, old))
        time.sleep(0.3)
        assert time.time() - (tmp_path / "p.claim").stat().st_mtime < 10
    assert not (tmp_path / "p.claim").exists()  # released on exit


def test_a_signal_stops_at_once_outside_a_critical_block_and_after_one_inside():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        with pytest.raises(Stopped, match="stopped by SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finished = []
        with pytest.raises(Stopped, match="SIGINT"), stop.critical():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            finished.append(True)  # the critical block ran to its end
        assert finished == [True]
    assert signal.getsignal(signal.SIGTERM) == before  # handlers put back


def test_a_requeued_slurm_job_takes_over_its_own_claims_at_once(tmp_path, monkeypatch):
    path = tmp_path / "p.claim"
    path.write_text(json.dumps({"host": "node-a", "pid": 1, "start": "1", "job": "77_3"}))
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    assert not Claims(tmp_path).claim("p")  # another task of the array: lease applies
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert Claims(tmp_path).claim("p")  # the same task, requeued on another node


def _need_the_value(directory, out):
    from pathlib import Path

    from lwq.claims import computed_once

    value_file, made_log = Path(directory) / "value.txt", Path(directory) / "made.log"

    def make():
        with open(made_log, "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough for the others to find the claim
        value_file.write_text("42")
        return "42"

    def ready():
        return value_file.read_text() if value_file.exists() else None

    value, _ = computed_once(Path(directory) / "claims", "value", ready, make, wait=0.1)
    Path(out).write_text(value)


def test_what_several_processes_need_at_once_is_made_once(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    outs = [tmp_path / f"out{i}" for i in range(3)]
    workers = [context.Process(target=_need_the_value, args=(tmp_path, o)) for o in outs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert [o.read_text() for o in outs] == ["42"] * 3
    assert len((tmp_path / "made.log").read_text().splitlines()) == 1
