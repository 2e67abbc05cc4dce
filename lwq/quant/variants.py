"""Where a plan's quantized blocks come from: the variant sources.

A variant source answers two questions for the applier (lwq.quant.install): what block
i's variant under a plan depends on (`key`), and that variant, ready to install
(`block`). Each variant is built from the block as loaded, never from another quantized
copy, and afterwards the original is parked on `keep_on` (the host by default).

- `LinearVariants` (rtn, bnb, quanto, hqq): a fresh copy of the original with every
  linear quantized on its own; the variant depends only on the block's bits.
- `CalibratedVariants` (a backend that declares `calibrated = True`: GPTQ) quantizes
  whole blocks on the hidden states entering them, and keeps what it built.

`quant.settings.inputs` picks the inputs a block at b bits is calibrated on:

- `full_precision` (default): the hidden states the unquantized model feeds it. The variant
  then depends only on (block, bits), so the first time any block is wanted at b bits one
  walk through the original blocks quantizes every block at b (the usual GPTQ pass), and
  every later plan of the sweep, whatever its order or fraction, reuses them.
- `sequential`: the hidden states the plan's own blocks before it produce (quantized ones
  included): the inputs it will really see, as in the GPTQ paper's sequential pass. The
  variant depends on the bits of every block before it, so it is rebuilt when those change
  (a sweep rebuilds most blocks at most points); only the current plan's variants are kept.

Calibrated variants are kept packed (their true size) on the host, and each install
unpacks a copy for evaluation (`backend.for_eval`).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file

from lwq.claims import computed_once
from lwq.errors import LwqError
from lwq.modeling.blocks import block_linears
from lwq.modeling.capture import BlockInputs
from lwq.plan import Plan
from lwq.quant.base import FULL_PRECISION, Backend, CalibratedBackend
from lwq.runtime import digest

Originals = Callable[[int], torch.nn.Module]  # block index -> the block as loaded


class Variants(Protocol):
    backend: Backend

    def key(self, i: int, plan: Plan) -> tuple:
        """What block i's variant under `plan` depends on (the applier rebuilds on change)."""

    def block(
        self,
        i: int,
        plan: Plan,
        original: Originals,
        installed: torch.nn.ModuleList,
        device: torch.device,
    ) -> torch.nn.Module:
        """Block i quantized for `plan` (a new module on `device`), from `original(i)`.

        `installed` holds the plan's blocks before i (the applier installs in order).
        """


def make_variants(
    backend: Backend,
    capture: Callable[[], BlockInputs],
    keep_on="cpu",
    store: VariantStore | None = None,
) -> LinearVariants | CalibratedVariants:
    """The variant source `backend` declares it needs; `capture()` gives the calibration
    inputs of block 0 (called on first use only, so fully recorded runs never pay);
    `store` shares a calibrated backend's blocks between processes and runs."""
    if backend.calibrated:
        return CalibratedVariants(backend, capture, keep_on, store)
    return LinearVariants(backend, keep_on)


class VariantStore:
    """Calibrated blocks on disk, shared by every job and run with the same model, backend
    and calibration (`identity`): the blocks of one width, on the full-precision model's
    inputs, are built once by whichever job needs them first (the others wait for them)
    and kept as one safetensors file a block (the packed tensors: no pickle)."""

    def __init__(self, directory: Path, identity: dict) -> None:
        self.directory = Path(directory)
        self.identity = identity

    def blocks(self, bits: int, n: int, backend, original: Originals, build) -> dict:
        """{j: packed block j at `bits`} for every block, loaded or `build()`-ed and saved."""
        name = "variants-" + digest({"identity": self.identity, "bits": bits, "blocks": n})
        folder = self.directory / name

        def ready():
            if not (folder / "complete").exists():
                return None
            return {
                j: self._load(folder / f"{j}.safetensors", original(j), bits, backend)
                for j in range(n)
            }

        def make():
            built = build()
            folder.mkdir(parents=True, exist_ok=True)
            for j, block in built.items():
                state = {k: v.detach().cpu().contiguous() for k, v in block.state_dict().items()}
                partial = folder / f".{j}.{os.getpid()}.tmp"
                save_file(state, str(partial))
                os.replace(partial, folder / f"{j}.safetensors")
            (folder / "complete").write_text(json.dumps({"identity": self.identity, "bits": bits}))
            return built

        return computed_once(self.directory / "claims", name, ready, make)[0]

    @staticmethod
    def _load(path: Path, original: torch.nn.Module, bits: int, backend) -> torch.nn.Module:
        shell = backend.packed_shell(copy.deepcopy(original).to("cpu"), bits)
        shell.load_state_dict(load_file(str(path)), strict=True)
        return backend.loaded(shell)


def quantize_block(
    block: torch.nn.Module,
    backend: Backend,
    bits: int,
    inputs: BlockInputs | None = None,
    where: str = "",
) -> torch.nn.Module:
    """Quantize one block (mutated) to `bits`, ready to evaluate: each linear on its own,
    or, for a calibrated backend, the whole block on `inputs` (the hidden states entering
    it). Errors start with `where` (e.g. "block 7 "). Returns `block`."""
    if not backend.calibrated:
        quantize_linears(block, backend, bits, where)
        return block
    if inputs is None:
        raise LwqError(f"quant={backend.name} needs the calibration inputs entering {where}block")
    try:
        backend.quantize_block(block, bits, inputs)
    except LwqError as err:
        raise LwqError(f"{where}{err}") from err
    return backend.for_eval(block)


def quantize_linears(block: torch.nn.Module, backend: Backend, bits: int, where: str = "") -> None:
    """Quantize every linear of `block` (mutated: the backend's modules installed by name)."""
    for name, module in block_linears(block):
        try:
            installed = backend.quantize(module, bits)
        except LwqError as err:
            raise LwqError(f"{where}{name}: {err}") from err
        if installed is not module:
            block.set_submodule(name, installed)


class LinearVariants:
    """Variants of a backend that quantizes one linear at a time; nothing is kept."""

    def __init__(self, backend: Backend, keep_on="cpu") -> None:
        self.backend = backend
        self.keep_on = torch.device(keep_on)
        self.builds = 0  # blocks quantized

    def key(self, i: int, plan: Plan) -> tuple:
        return (plan.bits[i],)

    def block(self, i, plan, original, installed, device) -> torch.nn.Module:
        source = original(i).to(self.keep_on)  # in place: the original leaves the accelerator
        block = copy.deepcopy(source).to(device)
        quantize_linears(block, self.backend, plan.bits[i], where=f"block {i} ")
        self.builds += 1
        return block


class CalibratedVariants:
    """The packed variants of a calibrated backend for one model and calibration set."""

    def __init__(
        self,
        backend: CalibratedBackend,
        capture: Callable[[], BlockInputs],
        keep_on="cpu",
        store: VariantStore | None = None,
    ) -> None:
        self.backend = backend
        self.store = None if backend.inputs == "sequential" else store
        self.sequential = backend.inputs == "sequential"
        self.keep_on = torch.device(keep_on)
        self._capture = capture
        self._first: BlockInputs | None = None
        self._packed: dict[tuple, torch.nn.Module] = {}
        self._cursor: BlockInputs | None = None  # sequential: inputs part-way through a plan
        self._cursor_bits: tuple[int, ...] = ()  # the plan bits the cursor went through
        self.builds = 0  # blocks quantized (a GPTQ run each)

    def key(self, i: int, plan: Plan) -> tuple:
        """What block i's variant under `plan` depends on."""
        bits = plan.bits[i]
        if bits == FULL_PRECISION or not self.sequential:
            return (bits,)
        return (bits, tuple(plan.bits[:i]))

    def block(self, i, plan, original, installed, device) -> torch.nn.Module:
        """Block i quantized for `plan`, unpacked for evaluation on `device` (a new copy).

        Sequential mode runs its inputs through `installed`, the plan's blocks before i.
        """
        key = (i, *self.key(i, plan))
        if key not in self._packed:
            if self.sequential:
                self._build_sequential(i, plan, original, installed, device)
            else:
                self._build_all(plan.bits[i], original, len(installed), device)
        block = self.backend.for_eval(copy.deepcopy(self._packed[key]).to(device))
        original(i).to(self.keep_on)  # only now: building may have run through it
        return block

    def first_inputs(self) -> BlockInputs:
        if self._first is None:
            self._first = self._capture()
        return self._first

    def _quantized(self, j: int, block: torch.nn.Module, bits: int, inputs: BlockInputs, device):
        variant = copy.deepcopy(block).to(device)
        try:
            self.backend.quantize_block(variant, bits, inputs)
        except LwqError as err:
            raise LwqError(f"block {j} {err}") from err
        self.builds += 1
        return variant.to(self.keep_on)

    def _build_all(self, bits: int, original, n: int, device) -> None:
        """Every block at `bits`, each on the full-precision model's inputs (from the
        store when another job or run built them already)."""

        def build() -> dict:
            inputs = self.first_inputs().copy()
            built = {}
            for j in range(n):
                block = original(j)
                if (j, bits) in self._packed:
                    built[j] = self._packed[(j, bits)]
                else:
                    built[j] = self._quantized(j, block, bits, inputs, device)
                if j + 1 < n:
                    inputs.advance(_on(block, device))
            return built

        if self.store is None:
            built = build()
        else:
            built = self.store.blocks(bits, n, self.backend, original, build)
        self._packed.update({(j, bits): block for j, block in built.items()})

    def _build_sequential(self, i: int, plan: Plan, original, installed, device) -> None:
        """Block i on the inputs the plan's installed blocks 0..i-1 produce."""
        done = self._cursor_bits
        if self._cursor is None or self._cursor.index > i or plan.bits[: len(done)] != done:
            self._cursor, self._cursor_bits = self.first_inputs().copy(), ()
            self._packed = {k: v for k, v in self._packed.items() if _consistent(k, plan)}
        while self._cursor.index < i:
            self._cursor.advance(installed[self._cursor.index])
        self._cursor_bits = tuple(plan.bits[:i])
        key = (i, *self.key(i, plan))
        self._packed[key] = self._quantized(i, original(i), plan.bits[i], self._cursor, device)


def _consistent(key: tuple, plan: Plan) -> bool:
    """A sequential variant still usable under `plan` (its prefix is the plan's)."""
    i, _, prefix = key
    return tuple(plan.bits[:i]) == prefix


def _on(block: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`block` on `device`: itself if it is there, else a copy (originals stay where they are)."""
    if next(block.parameters()).device == device:
        return block
    return copy.deepcopy(block).to(device)
