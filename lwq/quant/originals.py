"""Where the original of a block a plan changed waits between uses: in memory, or on disk.

A sweep that quantizes every block holds the model's quantized blocks and, beside them,
the original of each (to build other widths from and to restore): for SmolLM2 405 MB of
its 918 MB, for a 7B model ~13 GB of host memory on top of the GPU's copy. Originals
are read only when a variant is built or a block restored, so `OnDisk` writes each to a
scratch file the first time it is parked and drops its tensors (one element each is left,
seen in the tensor's shape); `load` reads it back, bit for bit (safetensors keeps dtype
and values). Parameters and buffers keep their Python objects, so nothing holding the
module notices.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from itertools import chain
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DISK = "disk"


class InMemory:
    """Originals stay as they are (the engine parks them on the host)."""

    def parked(self, i: int) -> bool:
        return True  # nothing to do for it

    def park(self, i: int, block: torch.nn.Module, keep: frozenset[int] = frozenset()) -> None:
        pass

    def load(self, i: int, block: torch.nn.Module) -> None:
        pass


class OnDisk:
    """Originals written once to files in a scratch folder (removed with this object)."""

    def __init__(self, under: Path) -> None:
        under.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="originals-", dir=under))
        self._remove = weakref.finalize(self, shutil.rmtree, self.folder, True)
        self._written: set[int] = set()
        self._devices: dict[int, dict[str, torch.device]] = {}  # parked: where each lived
        self.reads = 0

    def parked(self, i: int) -> bool:
        return i in self._devices

    def park(self, i: int, block: torch.nn.Module, keep: frozenset[int] = frozenset()) -> None:
        """Write block i's tensors out (the first time) and drop them from memory, except
        those whose storage is in `keep` (shared with a block in use)."""
        if self.parked(i):
            return
        tensors = dict(_tensors(block))
        if i not in self._written:
            save_file(
                {n: t.detach().to("cpu", copy=True) for n, t in tensors.items()}, self._path(i)
            )
            self._written.add(i)
        dropped = {n: t for n, t in tensors.items() if t.data_ptr() not in keep and t.numel()}
        self._devices[i] = {n: t.device for n, t in dropped.items()}
        for t in dropped.values():
            t.data = _placeholder(t)

    def load(self, i: int, block: torch.nn.Module) -> None:
        """Block i's tensors back where they were, exactly as written."""
        devices = self._devices.pop(i, None)
        if devices is None:
            return
        saved = load_file(self._path(i))
        for name, t in _tensors(block):
            if name in devices:
                t.data = saved[name].to(devices[name])
        self.reads += 1

    def _path(self, i: int) -> str:
        return str(self.folder / f"{i}.safetensors")


def _placeholder(t: torch.Tensor) -> torch.Tensor:
    """One element seen as `t`'s shape (sizes still read right: lwq.quant.cost), NaN where
    the dtype has it, so a parked original used by mistake gives non-finite numbers,
    which a point refuses to record."""
    fill = float("nan") if t.is_floating_point() or t.is_complex() else 0
    return torch.full((1,), fill, dtype=t.dtype, device=t.device).expand(t.shape)


def _tensors(block: torch.nn.Module):
    """(name, tensor) of every parameter and buffer, persistent or not, shared ones once."""
    return chain(block.named_parameters(), block.named_buffers())


def make_originals(where: str, scratch: Path) -> InMemory | OnDisk:
    return OnDisk(scratch) if where == DISK else InMemory()
