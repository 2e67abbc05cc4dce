"""Append-only result records: one JSON object per line, one line per evaluated point.

Every record is whole or absent, provably: each line carries a checksum of its own
content (`checksum`: the first 16 hex digits of the sha256 of the record's canonical
JSON without it), and a reader uses a line only if it parses and its checksum matches.
A line cut by a crash at any byte, a line edited by hand, anything else, is reported
with its path and line number and not used (that point is evaluated again); the rest of
the file is read as usual. Lines written before checksums existed (`schema` 1) are
trusted as they are.

Writers append under an exclusive lock (`flock`), one whole line per write call checked
for length, then fsync, so records of processes sharing the file never interleave. A
record that follows a torn line starts on a new line.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = 2  # 2: every line has a checksum
LEGACY_SCHEMA = 1


def checksum(record: dict) -> str:
    """The checksum a line of `record` carries (over every field but `checksum`)."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()[:16]


def canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True, allow_nan=True)


@dataclass
class ReadResult:
    records: list[dict] = field(default_factory=list)
    damaged: list[int] = field(default_factory=list)  # line numbers not used


class RecordStore:
    """The records of one model under `results/<model>/records.jsonl`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, record: dict) -> None:
        """Append one record as one checksummed line, under the file's lock."""
        record = {**record, "schema": SCHEMA}
        record["checksum"] = checksum(record)
        data = (canonical(record) + "\n").encode("utf-8")
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # after a torn write: start on a fresh line
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock
        if created:
            _fsync_directory(self.path.parent)

    def read(self) -> list[dict]:
        """Every whole record, in file order; damaged lines are reported and left out."""
        result = self.scan()
        for number in result.damaged:
            print(
                f"warning: {self.path}:{number} is a damaged record (cut or altered); "
                "not used, its point will be evaluated again",
                file=sys.stderr,
            )
        return result.records

    def scan(self) -> ReadResult:
        """The whole records and the numbers of the damaged lines, without reporting."""
        result = ReadResult()
        if not self.path.exists():
            return result
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            record = _whole(raw)
            if record is None:
                result.damaged.append(number)
            else:
                result.records.append(record)
        return result

    def done_keys(self) -> set[str]:
        """Keys of the points recorded as evaluated (failed points are not done); silent
        about damaged lines, which `read()` reports."""
        return {
            r["point_key"]
            for r in self.scan().records
            if "point_key" in r and r.get("status", "ok") == "ok"
        }


def _whole(raw: bytes) -> dict | None:
    """The record on one line, or None if the line is not a whole record."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if "checksum" not in record:
        return record if record.get("schema") == LEGACY_SCHEMA else None
    if record["checksum"] != checksum(record):
        return None
    return {k: v for k, v in record.items() if k != "checksum"}


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (a full disk, a signal): finish or fail loudly."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(f"wrote {written} bytes of a record; is the disk full?")
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
