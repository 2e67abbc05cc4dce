"""Append-only result records: one JSON object per line, one line per evaluated point.

Each append is a single write of a whole line followed by fsync, so a crash can at
worst leave one truncated line; reading skips a line that stops before its closing
brace with a warning (that point is simply evaluated again on resume) and refuses any
other unreadable line, naming it, rather than guessing.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from lwq.errors import LwqError

SCHEMA = 1


class RecordStore:
    """The records of one model under `results/<model>/records.jsonl`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, record: dict) -> None:
        line = json.dumps({"schema": SCHEMA, **record}, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            self._ensure_line_start(fd)
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _ensure_line_start(self, fd: int) -> None:
        """After a torn write, start the next record on a fresh line."""
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if not line.rstrip().endswith("}"):
                    warnings.warn(f"{self.path}:{number}: skipping a torn record", stacklevel=2)
                    continue
                raise LwqError(
                    f"{self.path}:{number} is not valid JSON ({err.msg}); move that line "
                    "out of the file to keep the other records"
                ) from err
        return records

    def done_keys(self) -> set[str]:
        return {r["point_key"] for r in self.read() if "point_key" in r}
