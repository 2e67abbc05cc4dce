"""What a run runs on and where its files are: the device and dtype (decided here, once),
paths named in configs, the seeds, one stable digest for keys, and the peak memory of a
phase.

Relative paths mean: relative to the working directory if the thing exists there, else
to the project root (so `models/ref-tiny` and `../shared/data` work from anywhere); a
path that exists in neither place is taken relative to the working directory.

Peak memory on CUDA is torch's allocator high-water mark on the device (reset at the
start of the phase). On the CPU it is the process's peak resident set (Linux `VmHWM`,
reset by writing 5 to /proc/self/clear_refs); where that reset is not possible the
figure is the peak since the process started, and the record says so.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import random
import re
import resource
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from lwq.errors import LwqError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` means CUDA when present, else CPU; an explicit device that is absent is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise LwqError(f"device={requested} is not a device; use auto, cpu or cuda[:N]") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LwqError(f"device={requested}: no CUDA device is visible here; use device=auto")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise LwqError(f"device={requested}: only {count} CUDA devices are visible")
    if device.type not in ("cpu", "cuda"):
        raise LwqError(f"device={requested} is not supported; use auto, cpu or cuda[:N]")
    return device


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto` means bfloat16 on CUDA (the paper models' native dtype), float32 on CPU."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if requested not in DTYPES:
        raise LwqError(f"unknown dtype {requested!r}; use auto or one of {', '.join(DTYPES)}")
    return DTYPES[requested]


def resolve_path(path: str | Path) -> Path:
    """An absolute local path for a file or directory named in a config."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for base in (Path.cwd(), PROJECT_ROOT):
        if (base / p).exists():
            return (base / p).resolve()
    return (Path.cwd() / p).resolve()


def resolve_model_path(path: str) -> str:
    """A local checkpoint directory (resolved as above) if one exists, else the hub id as given."""
    local = resolve_path(path)
    return str(local) if local.exists() else path


def digest(obj, length: int = 20) -> str:
    """A short stable hash of a JSON-able identity: every key and cache path of lwq (record
    and point keys 20 characters, score-cache files 16, prepared eval tasks 12).

    The one compatibility rule: an identity changes only when the numbers would. A
    setting added later enters an identity only when it differs from its default (its
    `settings()` leave the default out), so every key made before it existed stays the
    same and old records and caches are found again (tests/test_committed_keys.py).
    """
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


def seed_everything(seed: int) -> None:
    """Seed every generator a run may draw from without its own seed (libraries included);
    each of lwq's own draws (calibration windows, subsets, random orders) has its own."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def return_freed_memory() -> bool:
    """Have glibc give the freed pages of its heaps back to the system (`malloc_trim`)."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False  # not glibc


@contextmanager
def freed_after():
    """A phase of forward passes over many tokens (an evaluation, a calibration KL), after
    which the heap's freed pages go back to the system.

    glibc raises its mmap threshold to the size of each mapped block freed (up to 32 MB),
    so after a few forwards activations come from the heap: reused at no cost, but
    resident at its high-water mark. Trimming after each such phase gives that back
    (SmolLM2's 3-point sweep: 1,716 MiB peak trimming only before points, 1,599 MiB after
    each phase). Fixing the threshold at 1 MB instead (lwq did for a while) held 1,496 MiB
    but made every large temporary a fresh mapping whose pages fault in again: SmolLM2
    forwards ~25 % slower (9.2 -> 11.6 s a batch of 8 x 512) and GPTQ's block builds ~1.5x
    slower (12 -> 19 s a block)."""
    try:
        yield
    finally:
        return_freed_memory()


def _reset_host_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _host_peak_bytes() -> int:
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes


@contextmanager
def peak_memory(device: torch.device | str):
    """Measure the peak memory of the `with` body; yields a dict filled in on exit.

    The dict gets `peak_bytes` and `measure` (what the number is), ready for a record.
    """
    device = torch.device(device)
    found: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset = _reset_host_peak()
    try:
        yield found
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            found["peak_bytes"] = torch.cuda.max_memory_allocated(device)
            found["measure"] = "cuda max_memory_allocated"
        else:
            found["peak_bytes"] = _host_peak_bytes()
            found["measure"] = "process peak RSS" + ("" if reset else " since start")
