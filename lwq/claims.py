"""Claims, so that processes sharing a results tree never do the same work twice (a point,
a plan, a score, a calibrated variant).

A process claims a point before evaluating it by creating `<dir>/<point key>.claim`
exclusively (O_CREAT | O_EXCL: one process wins, on a local disk and on NFS v3+); the
file names its host, pid and process start time. While the process works, a heartbeat
thread touches its claims every `heartbeat` seconds. A claim is stale, and is taken over,
when its process is gone: on the same host, that pid is not running (or runs another
program: its start time differs); on another host, the claim was not touched for
`lease` seconds; and at once when it names this SLURM job: a requeued job (pre-empted or
timed out) takes over what it held before, wherever it runs now. Taking over happens
under a lock file and renames the stale file away first, so only one process can.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

LEASE_SECONDS = 600.0  # another host's claim untouched this long belongs to a dead process
HEARTBEAT_SECONDS = 30.0


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def slurm_job() -> str | None:
    """This SLURM job (array task included), which keeps its id when it is requeued."""
    job = os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return None if job is None else f"{job}_{task}" if task else job


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class Claims:
    """The claims of one results directory (shared by every process writing there)."""

    def __init__(
        self,
        directory: Path,
        *,
        lease: float = LEASE_SECONDS,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.directory = Path(directory)
        self.lease = lease
        self.heartbeat = heartbeat
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.job = slurm_job()
        self.mine: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.claim"

    def claim(self, key: str) -> bool:
        """True if this process now holds `key` (fresh, or taken over from a dead process)."""
        if self._create(key):
            return True
        with self._takeover():  # one process at a time judges and retires a claim
            holder = self.holder(key)
            if holder is not None and not self.is_stale(key, holder):
                return False
            self._retire(key)
            return self._create(key)

    def release(self, key: str) -> None:
        with self._lock:
            self.mine.discard(key)
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def holder(self, key: str) -> dict | None:
        """What the claim file says (None if there is none; {} if it is unreadable)."""
        try:
            return json.loads(self.path(key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # a claim torn by a crash while it was written: its process is gone

    def is_stale(self, key: str, holder: dict) -> bool:
        if self.job is not None and holder.get("job") == self.job and not self._mine(holder):
            return True  # our own job before SLURM requeued it (pre-emption, timeout)
        if holder.get("host") == self.host and isinstance(holder.get("pid"), int):
            pid = holder["pid"]
            return not pid_running(pid) or process_start(pid) != holder.get("start")
        try:
            age = time.time() - self.path(key).stat().st_mtime
        except FileNotFoundError:
            return True
        return age > self.lease or not holder

    def _mine(self, holder: dict) -> bool:
        return holder.get("host") == self.host and holder.get("pid") == self.pid

    def __enter__(self) -> Claims:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="lwq-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for key in list(self.mine):
            self.release(key)

    def _create(self, key: str) -> bool:
        self.directory.mkdir(parents=True, exist_ok=True)
        info = {
            "host": self.host,
            "pid": self.pid,
            "start": process_start(self.pid),
            "job": self.job,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        try:
            fd = os.open(self.path(key), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(info))
        with self._lock:
            self.mine.add(key)
        return True

    @contextlib.contextmanager
    def _takeover(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".takeover.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _retire(self, key: str) -> None:
        """Move a stale claim aside (under the takeover lock), then delete it."""
        aside = self.directory / f"{key}.stale-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):
            self.path(key).rename(aside)
            aside.unlink()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with self._lock:
                held = list(self.mine)
            for key in held:
                with contextlib.suppress(FileNotFoundError):
                    os.utime(self.path(key))


def computed_once(directory: Path, name: str, ready, make, wait: float = 5.0):
    """(value, made here): `ready()` if it already gives a value (not None); else `make()`,
    run by the one process that claims `name` while the others wait for `ready()`. For
    what several jobs may need at once (a score, a calibrated variant): made once."""
    value = ready()
    if value is not None:
        return value, False
    with Claims(directory) as claims:
        while True:
            if claims.claim(name):
                try:
                    value = ready()  # made by another process between our looks?
                    return (value, False) if value is not None else (make(), True)
                finally:
                    claims.release(name)
            time.sleep(wait)
            value = ready()
            if value is not None:
                return value, False
