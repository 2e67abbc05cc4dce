"""Stopping a run cleanly: SIGTERM (what SLURM sends on pre-emption) and SIGINT (Ctrl-C).

While `StopSignals` is active, either signal stops the run at once by raising `Stopped`
wherever the main thread is, so the point being evaluated is abandoned (its claim is
released and the model restored by the `finally` blocks on the way out) - except inside
`critical()`, around writing a record, where the signal is held until the record is whole.

SIGUSR2 is held there too when a Python handler was already installed for it: submitit
(`hydra/launcher=slurm`) installs one in every job that, on pre-emption or time-out,
checkpoints, runs `scontrol requeue` and ends the process with `sys.exit` wherever it is.
Inside `critical()` that handler runs only once the block has ended; outside, at once.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)
HELD = (signal.SIGUSR2,)  # submitit's pre-emption signal (its SUBMITIT_PREEMPT_SIGNAL default)


class Stopped(Exception):
    """The run was asked to stop by a signal; what was recorded is kept."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum).name
        self.kept = "no new point was recorded"  # the command says what it kept
        super().__init__(self.signal)

    def __str__(self) -> str:
        return f"stopped by {self.signal}: {self.kept}; run the same command again to resume"


class StopSignals:
    """Turns SIGTERM and SIGINT into `Stopped` for the `with` block, and holds SIGUSR2's
    own handler back during `critical()` (main thread only; handlers put back at exit)."""

    def __init__(self) -> None:
        self._depth = 0
        self._pending: int | None = None  # a stop signal that arrived in a critical block
        self._held: list[int] = []  # HELD signals that arrived there, in order
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
            for signum in HELD:
                if callable(signal.getsignal(signum)):  # SIG_DFL/SIG_IGN: nothing to defer
                    self._previous[signum] = signal.signal(signum, self._hold)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @contextmanager
    def critical(self):
        """A block no signal interrupts: a held handler runs when it ends (even by an
        error), then a stop signal that arrived meanwhile stops the run."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._run_held()
        if self._depth == 0 and self._pending is not None:
            signum, self._pending = self._pending, None
            raise Stopped(signum)

    def _run_held(self) -> None:
        while self._held:
            signum = self._held.pop(0)
            self._previous[signum](signum, None)  # submitit's may end the process here

    def _handle(self, signum, _frame) -> None:
        if self._depth:
            self._pending = signum
            return
        raise Stopped(signum)

    def _hold(self, signum, frame) -> None:
        if self._depth:
            if signum not in self._held:
                self._held.append(signum)
            return
        self._previous[signum](signum, frame)
