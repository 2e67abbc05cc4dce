"""The reference corpus: Python's own standard library, present on every machine with Python.

Files are assigned to a split by a hash of their relative path, so the split is stable
and needs no stored file list. Test suites, codec tables and other machine-generated
tables are left out: they are trivially predictable and would make perplexity look far
better than it is on real text.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "calib", "heldout")

# Path parts that mark test suites or generated tables (relative to the stdlib root).
_EXCLUDED_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings"}
_EXCLUDED_FILES = {"html/entities.py", "stringprep.py"}
_EXCLUDED_PREFIXES = ("_sysconfigdata", "config-")


@dataclass(frozen=True)
class Document:
    """One source file: `name` is its path relative to the stdlib root."""

    name: str
    text: str


def stdlib_root() -> Path:
    """The directory holding the pure-Python standard library of this interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(name: str) -> str:
    """Deterministic split for a relative path: ~90% train, ~5% calib, ~5% heldout."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 20
    if bucket == 0:
        return "heldout"
    if bucket == 1:
        return "calib"
    return "train"


def _is_included(rel: Path) -> bool:
    if any(part in _EXCLUDED_PARTS for part in rel.parts[:-1]):
        return False
    if rel.as_posix() in _EXCLUDED_FILES:
        return False
    return not any(rel.parts[0].startswith(p) for p in _EXCLUDED_PREFIXES)


def load_split(split: str, root: Path | None = None) -> list[Document]:
    """All documents of `split`, sorted by name (so every consumer sees one order)."""
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; use one of {', '.join(SPLITS)}")
    root = root or stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"standard library not found at {root}; is Python installed?")
    return list(_read_split(split, root))


@functools.lru_cache(maxsize=8)
def _read_split(split: str, root: Path) -> tuple[Document, ...]:
    """Read once a process: a sweep wants the same split for its suite, its calibration
    and their digests."""
    docs = []
    for path in _python_files(root):
        rel = path.relative_to(root)
        if not _is_included(rel) or split_of(rel.as_posix()) != split:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            docs.append(Document(rel.as_posix(), text))
    return tuple(docs)


def _python_files(root: Path) -> list[Path]:
    """Every .py file under `root`, sorted, not descending into excluded directories:
    site-packages alone can hold tens of thousands of files that would all be left out."""
    files = []
    for folder, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _EXCLUDED_PARTS]
        files += [Path(folder, name) for name in names if name.endswith(".py")]
    return sorted(files)
