"""Peak memory of one phase (quantizing a plan, evaluating it), for the records.

On CUDA the peak is torch's allocator high-water mark on the device (reset at the start
of the phase). On the CPU it is the process's peak resident set (Linux `VmHWM`, reset by
writing 5 to /proc/self/clear_refs); where that reset is not possible the figure is the
peak since the process started, and the record says so.
"""

from __future__ import annotations

import re
import resource
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


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
