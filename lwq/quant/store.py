"""Built blocks on disk, shared by every job and run with the same model, backend and
calibration.

A kept backend's blocks (lwq.quant.base.KeptBackend: GPTQ's blocks of one width on the
full-precision model's inputs, a window backend's blocks of one plan) are built once by
whichever job needs them first; the others wait for its claim (lwq.claims) and then read
them. One safetensors file a block (the backend's `state`: no pickle) and a `complete`
marker written last, so a killed build leaves nothing that looks finished.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
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
        # the name is unchanged since blocks were first stored: old stores stay valid
        name = "variants-" + digest({"identity": self.identity, "bits": bits, "blocks": n})
        folder = self.directory / name
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
            return built

        return computed_once(self.directory / "claims", name, ready, make)[0]
