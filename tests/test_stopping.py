"""SIGUSR2 while lwq writes a record: submitit's handler (checkpoint, `scontrol requeue`,
`sys.exit`) must not end the process inside `StopSignals.critical()`, or the record it was
writing would be left half-written. These tests send the signal to their own process."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from lwq.commands.stopping import Stopped, StopSignals


@pytest.fixture
def usr2_calls():
    """A Python handler for SIGUSR2, as submitit installs in a job; it logs each call."""
    calls: list[str] = []
    before = signal.signal(signal.SIGUSR2, lambda signum, _frame: calls.append("usr2 handler"))
    try:
        yield calls
    finally:
        signal.signal(signal.SIGUSR2, before)


def _send(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.1)  # Python runs handlers between bytecodes: give it the chance


def test_outside_a_critical_block_the_usr2_handler_runs_at_once(usr2_calls):
    with StopSignals():
        _send(signal.SIGUSR2)
        assert usr2_calls == ["usr2 handler"]


def test_inside_a_critical_block_the_usr2_handler_runs_only_after_it_ends(usr2_calls):
    with StopSignals() as stop:
        with stop.critical():
            _send(signal.SIGUSR2)
            _send(signal.SIGUSR2)  # a second one while held: still one call
            usr2_calls.append("block ended")
        assert usr2_calls == ["block ended", "usr2 handler"]
        _send(signal.SIGUSR2)  # nothing held any more: at once again
        assert usr2_calls == ["block ended", "usr2 handler", "usr2 handler"]


def test_a_handler_that_exits_like_submitits_leaves_the_file_whole(tmp_path):
    """submitit's handler ends with sys.exit(-1): the two halves of the line are both written."""
    before = signal.signal(signal.SIGUSR2, lambda *_: sys.exit(-1))
    path = tmp_path / "records.jsonl"
    try:
        with StopSignals() as stop, pytest.raises(SystemExit), stop.critical():
            out = path.open("a")
            out.write('{"k": ')
            out.flush()
            _send(signal.SIGUSR2)
            out.write("1}\n")
            out.close()
    finally:
        signal.signal(signal.SIGUSR2, before)
    assert path.read_text() == '{"k": 1}\n'


class _FakeJob:
    """What submitit's SignalHandler asks of its job environment."""

    global_rank = 0

    def __init__(self) -> None:
        self.requeued: list[int] = []

    def _requeue(self, countdown: int) -> None:
        self.requeued.append(countdown)  # submitit runs `scontrol requeue` here


def test_submitits_own_handler_requeues_and_exits_only_after_the_block(tmp_path):
    """The installed submitit's handler (the one `hydra/launcher=slurm` jobs have): the
    requeue and the exit wait for the record to be whole."""
    job_environment = pytest.importorskip("submitit.core.job_environment")
    from submitit.core.utils import DelayedSubmission

    job, delayed = _FakeJob(), DelayedSubmission(print)
    delayed.set_timeout(timeout_min=60, max_num_timeout=3)  # not timed out: a pre-emption
    handler = job_environment.SignalHandler(job, None, delayed)
    before = signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    path = tmp_path / "records.jsonl"
    try:
        with StopSignals() as stop, pytest.raises(SystemExit), stop.critical():
            path.write_text('{"k": ')
            _send(signal.SIGUSR2)
            assert job.requeued == []  # held
            path.write_text('{"k": 1}\n')
    finally:
        signal.signal(signal.SIGUSR2, before)
    assert job.requeued == [3] and path.read_text() == '{"k": 1}\n'


def test_nested_blocks_hold_usr2_until_the_outermost_ends(usr2_calls):
    with StopSignals() as stop, stop.critical():
        with stop.critical():
            _send(signal.SIGUSR2)
        usr2_calls.append("inner ended")
    assert usr2_calls == ["inner ended", "usr2 handler"]


def test_usr2_and_sigterm_in_one_block_run_the_handler_then_stop(usr2_calls):
    """Pre-emption sends USR2 then SIGTERM: submitit's requeue first, then lwq's stop."""
    with StopSignals() as stop:
        with pytest.raises(Stopped, match="stopped by SIGTERM"), stop.critical():
            _send(signal.SIGUSR2)
            _send(signal.SIGTERM)
            usr2_calls.append("block ended")
        assert usr2_calls == ["block ended", "usr2 handler"]


def test_a_held_handler_runs_when_the_block_ends_by_an_error(usr2_calls):
    with StopSignals() as stop, pytest.raises(OSError), stop.critical():
        _send(signal.SIGUSR2)
        raise OSError("disk full")
    assert usr2_calls == ["usr2 handler"]


def test_handlers_are_put_back_and_sig_dfl_is_left_alone(usr2_calls):
    handler = signal.getsignal(signal.SIGUSR2)
    with StopSignals():
        assert signal.getsignal(signal.SIGUSR2) != handler  # held by lwq meanwhile
    assert signal.getsignal(signal.SIGUSR2) is handler
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)  # no Python handler: nothing to defer
    with StopSignals():
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
