"""Peak memory per phase: what a phase allocates shows, and an earlier phase's peak does not."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from lwq.runtime import peak_memory

MB = 1 << 20


def _resident_bytes() -> int:
    return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024


def test_a_phase_reports_what_it_allocated_and_forgets_the_phase_before():
    before = _resident_bytes()
    with peak_memory("cpu") as big:
        block = torch.ones(512 * MB // 4)  # written, so resident
        del block
    with peak_memory("cpu") as idle:
        pass
    assert big["measure"] == "process peak RSS"  # reset per phase (Linux clear_refs)
    assert big["peak_bytes"] > before + 450 * MB
    assert idle["peak_bytes"] < big["peak_bytes"] - 400 * MB  # the big phase is forgotten
