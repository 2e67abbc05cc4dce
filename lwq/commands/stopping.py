"""Stopping a run cleanly: SIGTERM (what SLURM sends on pre-emption) and SIGINT (Ctrl-C).

While `StopSignals` is active, either signal stops the run at once by raising `Stopped`
wherever the main thread is, so the point being evaluated is abandoned (its claim is
released and the model restored by the `finally` blocks on the way out) - except inside
`critical()`, around writing a record, where the signal is held until the record is whole.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """The run was asked to stop by a signal; what was recorded is kept."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum).name
        self.kept = "no new point was recorded"  # the command says what it kept
        super().__init__(self.signal)

    def __str__(self) -> str:
        return f"stopped by {self.signal}: {self.kept}; run the same command again to resume"


class StopSignals:
    """Turns SIGTERM and SIGINT into `Stopped` for the `with` block (main thread only)."""

    def __init__(self) -> None:
        self._depth = 0
        self._pending: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @contextmanager
    def critical(self):
        """A block no signal interrupts: a signal that arrives meanwhile stops the run after."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self._pending is not None:
            signum, self._pending = self._pending, None
            raise Stopped(signum)

    def _handle(self, signum, _frame) -> None:
        if self._depth:
            self._pending = signum
            return
        raise Stopped(signum)
