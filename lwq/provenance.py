"""Where a record's numbers came from: the code (git commit, dirty or not), the libraries
(torch, transformers, lm-eval and the quantizer library of the backend), and a sha256 of
every data file and weight file the run read.

Hashing a 13B checkpoint reads 26 GB; a digest is therefore kept in a small cache file,
keyed by the file's path, size and modification time, and reused until one of them
changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import lwq
from lwq.runtime import PROJECT_ROOT

CHUNK = 1 << 20
# The distribution each backend's library ships as (rtn is lwq's own).
BACKEND_LIBRARIES = {
    "bnb": ("bitsandbytes",),
    "quanto": ("optimum-quanto",),
    "hqq": ("hqq",),
    "gptq": ("gptqmodel", "torchao"),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def git_state(root: Path = PROJECT_ROOT) -> dict:
    """{"commit": hash or None, "dirty": bool or None}: None where root is not a git tree."""
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _git(root: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout.strip()


def library_versions(backend: str | None = None) -> dict:
    """Versions of everything that changes the numbers, for the backend in use."""
    names = ["torch", "transformers", "lm-eval", *BACKEND_LIBRARIES.get(backend or "", ())]
    versions = {"lwq": lwq.__version__, "python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def file_sha256(path: Path, cache: Path | None = None) -> str:
    """The sha256 of a file, from `cache` (a JSON file) while its size and mtime are unchanged."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    known = _read_cache(cache)
    entry = known.get(str(path))
    if entry and entry["stamp"] == stamp:
        return entry["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    if cache is not None:
        known = _read_cache(cache)  # another process may have added entries meanwhile
        known[str(path)] = {"stamp": stamp, "sha256": digest.hexdigest()}
        _write_cache(cache, known)
    return digest.hexdigest()


def files_sha256(paths, cache: Path | None = None, base: Path | None = None) -> dict:
    """{name: sha256} of files, named relative to `base` where they lie under it."""
    out = {}
    for path in sorted(Path(p).resolve() for p in paths):
        name = str(path.relative_to(base)) if base and path.is_relative_to(base) else str(path)
        out[name] = file_sha256(path, cache)
    return out


def weight_files(checkpoint: str) -> list[Path]:
    """The weight files of a local checkpoint directory or of a hub id's cached snapshot."""
    local = Path(checkpoint).expanduser()
    if local.is_file():
        return [local]
    if not local.is_dir():
        local = _hub_snapshot(checkpoint)
    if local is None:
        return []
    return sorted(p for p in local.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def _hub_snapshot(repo_id: str) -> Path | None:
    """The directory of a hub model's cached snapshot (None if it is not cached)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or not a hub id: nothing to hash
        return None


def texts_sha256(texts: list[str]) -> str:
    """One digest of documents that come from no single file (the stdlib corpus, the hub)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()


def _read_cache(cache: Path | None) -> dict:
    if cache is None or not Path(cache).is_file():
        return {}
    try:
        return json.loads(Path(cache).read_text())
    except (OSError, ValueError):
        return {}  # a damaged cache only costs a recomputation


def _write_cache(cache: Path, known: dict) -> None:
    cache = Path(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(known, indent=1, sort_keys=True))
    os.replace(partial, cache)
