"""Built blocks on disk, shared by every job and run with the same model, backend and
calibration.

A kept backend's blocks (lwq.quant.base.KeptBackend: GPTQ's blocks of one width on the
full-precision model's inputs, a window backend's blocks of one plan) are built once by
whichever job needs them first; the others wait for its claim (lwq.claims) and then read
them. One safetensors file a block (the backend's `state`: no pickle) and a `complete`
marker written last, so a killed build leaves nothing that looks finished. A window
calibration's resume file (`ResumeFile`) sits in the same folder until that marker is
written.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lwq.claims import computed_once
from lwq.runtime import digest

Originals = Callable[[int], torch.nn.Module]  # block index -> the block as loaded
Built = dict[int, torch.nn.Module]  # block index -> built block


class VariantStore:
    """A directory of built blocks for one model and backend identity."""

    def __init__(self, directory: Path, identity: dict) -> None:
        self.directory = Path(directory)
        self.identity = identity

    def blocks(
        self,
        bits: int | tuple[int, ...],
        n: int,
        backend,
        original: Originals,
        build: Callable[[], Built],
    ) -> Built:
        """The blocks built at `bits` (one width for every block, or a whole plan's bits),
        loaded from disk or `build()`-ed and saved. `n` is the number of blocks."""
        folder = self.folder(bits, n)
        name = folder.name
        width = (lambda j: bits) if isinstance(bits, int) else (lambda j: bits[j])

        def ready() -> Built | None:
            marker = folder / "complete"
            if not marker.exists():
                return None
            held = json.loads(marker.read_text()).get("held", list(range(n)))
            return {
                j: backend.restore(
                    copy.deepcopy(original(j)).to("cpu"),
                    width(j),
                    load_file(str(folder / f"{j}.safetensors")),
                )
                for j in held
            }

        def make() -> Built:
            built = build()
            folder.mkdir(parents=True, exist_ok=True)
            for j, block in built.items():
                partial = folder / f".{j}.{os.getpid()}.tmp"
                save_file(backend.state(block), str(partial))
                os.replace(partial, folder / f"{j}.safetensors")
            marker = {"identity": self.identity, "bits": bits, "held": sorted(built)}
            (folder / "complete").write_text(json.dumps(marker))
            ResumeFile(folder).clear()  # complete: nothing left to resume
            return built

        return computed_once(self.directory / "claims", name, ready, make)[0]

    def folder(self, bits: int | tuple[int, ...], n: int) -> Path:
        """Where the blocks built at `bits` (of `n` blocks) are kept."""
        # the name is unchanged since blocks were first stored: old stores stay valid
        return self.directory / (
            "variants-" + digest({"identity": self.identity, "bits": bits, "blocks": n})
        )

    def resume(self, bits: tuple[int, ...], n: int) -> ResumeFile:
        """The resume file of the calibration of plan `bits`, beside its blocks."""
        return ResumeFile(self.folder(bits, n))


class ResumeFile:
    """A long calibration's state after its last finished step (a window), so a killed
    run continues from there: tensors and a position (str -> str) in one safetensors
    file, replaced atomically, removed by the store once the blocks are complete."""

    NAME = "resume.safetensors"

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / self.NAME

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        if not self.path.exists():
            return None
        with safe_open(str(self.path), "pt") as f:
            position = f.metadata() or {}
        return load_file(str(self.path)), position

    def save(self, tensors: dict[str, torch.Tensor], position: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.NAME}.{os.getpid()}.tmp")
        save_file(tensors, str(partial), metadata=position)
        os.replace(partial, self.path)  # a kill leaves the old file or the new one, whole

    def clear(self) -> None:
        """The file and any temporary file a killed save left behind."""
        for path in [self.path, *self.path.parent.glob(f".{self.NAME}.*.tmp")]:
            path.unlink(missing_ok=True)
