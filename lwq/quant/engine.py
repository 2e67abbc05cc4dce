"""The layer-wise engine: block i's variant under a plan, built from the blocks as loaded.

The walk, by the backend's unit (lwq.quant.base):

- linear: a copy of block i with each linear quantized on its own. Depends on its bits only.
- block, `inputs: full_precision` (GPTQ's default): the first time any block is wanted at
  b bits, one walk captures block 0's calibration inputs, quantizes each original block at
  b on them and advances them through the original block. Every later plan reuses those
  blocks, whatever its order; the disk store shares them between jobs and runs.
- block, `inputs: sequential`: block i is quantized on the inputs the plan's own blocks
  0..i-1 produce (the installed ones), so it depends on their bits as well; a cursor walks
  the plan and only blocks consistent with the current plan are kept.
- window: the backend calibrates every block together for the plan; block i depends on
  the bits of the blocks in its reach, usually the whole plan: one calibration per plan.

A block whose linears have different widths (a finer unit's plan, lwq.plan) is built the
same way: a linear backend quantizes each linear at its own width; GPTQ quantizes the
block on the inputs entering it (the full-precision model's, walked to by a cursor
through the originals, or the plan's own), each linear at its width and those at 16 left
as loaded. Such variants are kept in memory, not in the disk store, the least recently
built dropped beyond `MIXED_KEPT_PER_BLOCK` per block on average (a search over linear
units meets thousands). A window backend calibrates whole blocks and refuses them. The
cursor keeps the full-precision inputs of the blocks it passes, every `stride` blocks as
far as `keep_inputs` GB allow (`eval.reuse_memory`), so a plan whose first mixed block
lies behind it (a search's next child) starts from the nearest kept block instead of
block 0: the same tensors, fewer block forwards.

This module is the only code that reads `inputs`. Kept blocks stay packed on the host
(their true size); each install unpacks a copy (`for_eval`) unless `packed` is asked for.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable

import torch

from lwq.errors import LwqError
from lwq.modeling.blocks import block_linears
from lwq.modeling.capture import BlockInputs
from lwq.plan import Plan, entry_widths
from lwq.quant.base import BLOCK, FULL_PRECISION, LINEAR, Backend
from lwq.quant.store import Built, Originals, VariantStore

MIXED_KEPT_PER_BLOCK = 8  # mixed-width variants kept, times the number of blocks
GB = 1e9


class Engine:
    """Builds and keeps the variants of one backend for one model and calibration set.

    `capture()` gives block 0's calibration inputs (called on first use only, so a fully
    recorded run never pays for it); `store` shares kept blocks between processes.
    """

    def __init__(
        self,
        backend: Backend,
        capture: Callable[[], BlockInputs] | None = None,
        store: VariantStore | None = None,
        keep_on="cpu",
        keep_inputs: float | None = None,
    ) -> None:
        self.backend = backend
        self.sequential = backend.unit == BLOCK and backend.inputs == "sequential"
        self.store = None if self.sequential else store
        self.keep_on = torch.device(keep_on)
        self._capture = capture
        self._first: BlockInputs | None = None
        self._kept: dict[tuple, torch.nn.Module] = {}  # (i, *key) -> packed block
        self._cursor: BlockInputs | None = None  # sequential: inputs part-way through a plan
        self._cursor_bits: tuple = ()  # the plan bits the cursor went through
        self._full: BlockInputs | None = None  # full-precision inputs part-way (mixed blocks)
        self._full_at: dict[int, list[torch.Tensor]] = {}  # ... kept, by the block they enter
        self._keep_bytes = int((keep_inputs or 0) * GB)
        self.walked = 0  # blocks the full-precision cursor ran
        self._mixed: OrderedDict[tuple, None] = OrderedDict()  # their keys, oldest first
        self.builds = 0  # blocks quantized

    def key(self, i: int, plan: Plan) -> tuple:
        """What block i's variant under `plan` depends on (the applier rebuilds on change)."""
        bits, unit = plan.bits[i], self.backend.unit
        if bits == FULL_PRECISION or unit == LINEAR or (unit == BLOCK and not self.sequential):
            return (bits,)
        if unit == BLOCK:
            return (bits, tuple(plan.bits[:i]))
        return (bits, tuple(plan.bits[j] for j in unit.reach(i, len(plan.bits))))

    def keys(self, plan: Plan) -> tuple[tuple, ...]:
        """Every block's key: two plans with equal keys up to block j compute the same
        hidden states entering it (lwq.modeling.prefix)."""
        return tuple(self.key(i, plan) for i in range(len(plan.bits)))

    def variant(
        self,
        i: int,
        plan: Plan,
        original: Originals,
        installed: torch.nn.ModuleList,
        device: torch.device,
        packed: bool = False,
    ) -> torch.nn.Module:
        """Block i quantized for `plan`: a new module on `device`, built from `original(i)`.

        `installed` holds the plan's blocks before i (the applier installs in order);
        `packed` gives a kept backend's packed modules instead of the evaluated form.
        """
        bits = plan.bits[i]
        if self.backend.unit == LINEAR:
            block = copy.deepcopy(original(i).to(self.keep_on)).to(device)
            quantize_linears(block, self.backend, bits, where=f"block {i} ")
            self.builds += 1
            return block
        if isinstance(bits, tuple) and self.backend.unit != BLOCK:
            raise LwqError(
                f"quant={self.backend.name} calibrates whole blocks together and cannot give "
                f"block {i} linears of different widths; use allocate.unit=block"
            )
        key = (i, *self.key(i, plan))
        if key not in self._kept:
            if self.sequential:
                self._walk_sequential(i, plan, original, installed, device)
            elif isinstance(bits, tuple):
                self._build_on_full_precision(i, bits, original, device)
            elif self.backend.unit == BLOCK:
                self._walk_full_precision(bits, original, len(installed), device)
            else:
                self._calibrate_window(plan, original, device)
        elif key in self._mixed:
            self._mixed.move_to_end(key)  # recently used: dropped last
        block = copy.deepcopy(self._kept[key]).to(device)
        original(i).to(self.keep_on)  # only now: building may have run through it
        return block if packed else self.backend.for_eval(block)

    def first_inputs(self) -> BlockInputs:
        if self._first is None:
            if self._capture is None:
                raise LwqError(f"quant={self.backend.name} needs calibration inputs")
            self._first = self._capture()
        return self._first

    def _quantized(
        self, j: int, block, bits, inputs: BlockInputs, device, built=()
    ) -> torch.nn.Module:
        copied = copy.deepcopy(block).to(device)
        variant = quantize_block(copied, self.backend, bits, inputs, j, packed=True, built=built)
        self.builds += 1
        return variant.to(self.keep_on)

    def _walk_full_precision(self, bits: int, original: Originals, n: int, device) -> None:
        """Every block at `bits`, each on the full-precision model's inputs."""

        def build() -> Built:
            inputs = self.first_inputs().copy()
            built = {}
            for j in range(n):
                block = original(j)
                if (j, bits) in self._kept:
                    built[j] = self._kept[(j, bits)]
                else:
                    built[j] = self._quantized(j, block, bits, inputs, device)
                if j + 1 < n:
                    inputs.advance(_on(block, device))
            return built

        built = (
            build()
            if self.store is None
            else self.store.blocks(bits, n, self.backend, original, build)
        )
        self._kept.update({(j, bits): block for j, block in built.items()})

    def _build_on_full_precision(self, i: int, widths: tuple, original: Originals, device):
        """Block i with per-linear `widths`, on the full-precision model's inputs entering
        it: a cursor walks the originals forward (plans are installed in block order, so
        a plan's mixed blocks cost one walk between them)."""
        self._full = self._full_precision_at(i, original, device)
        # block i's kept variants were built on these same inputs: GPTQ takes the leading
        # groups one of them quantized at the same widths (a search's child changes few)
        built = [(k[1], v) for k, v in self._kept.items() if k[0] == i and len(k) == 2]
        self._kept[(i, widths)] = self._quantized(i, original(i), widths, self._full, device, built)
        self._mixed[(i, widths)] = None
        blocks = len(self._full.kwargs)  # kwargs: one list per block
        while len(self._mixed) > max(1, MIXED_KEPT_PER_BLOCK * blocks):  # never the new one
            self._kept.pop(self._mixed.popitem(last=False)[0], None)

    def _full_precision_at(self, i: int, original: Originals, device) -> BlockInputs:
        """The full-precision model's inputs entering block i, walked from the nearest of
        the cursor and the kept blocks before i (block 0 when neither is). Every
        `stride`-th block's inputs are kept on the way."""
        full = self._full
        kept = max((j for j in self._full_at if j <= i), default=0)
        if full is None or full.index > i or full.index < kept:
            first = self.first_inputs()
            hidden = self._full_at[kept] if kept else first.hidden
            full = BlockInputs(list(hidden), first.kwargs, kept, first.tuple_outputs)
        stride = self._stride(full)
        while full.index < i:
            full.advance(_on(original(full.index), device))
            self.walked += 1
            if full.index % stride == 0:
                self._full_at.setdefault(full.index, full.hidden)
        return full

    def _stride(self, inputs: BlockInputs) -> int:
        per_block = sum(h.nbytes for h in inputs.hidden)
        return keep_stride(len(inputs.kwargs), per_block, self._keep_bytes)

    def _walk_sequential(self, i: int, plan: Plan, original: Originals, installed, device) -> None:
        """Block i on the inputs the plan's installed blocks 0..i-1 produce."""
        done = self._cursor_bits
        if self._cursor is None or self._cursor.index > i or plan.bits[: len(done)] != done:
            self._cursor, self._cursor_bits = self.first_inputs().copy(), ()
            self._kept = {k: v for k, v in self._kept.items() if plan.bits[: k[0]] == k[2]}
        while self._cursor.index < i:
            self._cursor.advance(installed[self._cursor.index])
        self._cursor_bits = tuple(plan.bits[:i])
        key = (i, *self.key(i, plan))
        self._kept[key] = self._quantized(i, original(i), plan.bits[i], self._cursor, device)

    def _calibrate_window(self, plan: Plan, original: Originals, device) -> None:
        """Every block of `plan` calibrated together (a window backend). A backend that
        `resumes` gets the plan's resume file in the store: a killed calibration continues."""
        n = len(plan.bits)
        # the blocks of plans calibrated before go first, before this calibration's peak:
        # a sweep would otherwise hold every point's blocks in memory (a plan applied
        # again comes back from the store, or is calibrated again without one)
        self._kept.clear()
        resume = {}
        if self.store is not None and getattr(self.backend, "resumes", False):
            resume = {"resume": self.store.resume(tuple(plan.bits), n)}

        def build() -> Built:
            blocks = [copy.deepcopy(original(j)).to(device) for j in range(n)]
            try:
                inputs = self.first_inputs().copy()
                out = self.backend.quantize(blocks, plan.bits, inputs, **resume)
            except LwqError as err:
                raise LwqError(f"plan {list(plan.bits)}: {err}") from err
            self.builds += sum(b != FULL_PRECISION for b in plan.bits)
            return {j: out[j].to(self.keep_on) for j in range(n) if plan.bits[j] != FULL_PRECISION}

        if self.store is None:
            built = build()
        else:
            built = self.store.blocks(tuple(plan.bits), n, self.backend, original, build)
        self._kept.update({(j, *self.key(j, plan)): block for j, block in built.items()})


def keep_stride(blocks: int, per_block: int, keep_bytes: int) -> int:
    """Keep every stride-th block's inputs (blocks stride, 2 x stride, ... below `blocks`):
    as many as `keep_bytes` hold, evenly spread; `blocks` (none kept) when not one fits.
    The engine's rule, and the dry run's account of it."""
    room = keep_bytes // max(1, per_block)
    return max(1, -(-(blocks - 1) // room)) if room else blocks


def quantize_block(
    block: torch.nn.Module,
    backend: Backend,
    bits: int | tuple[int, ...],
    inputs: BlockInputs | None = None,
    index: int | None = None,
    packed: bool = False,
    built=(),
) -> torch.nn.Module:
    """`block` (mutated) at `bits`, ready to evaluate: each linear on its own, or for a
    block backend the whole block on `inputs` (left packed with `packed`; `built`: its
    variants built before on the same inputs, which it may take groups from). Errors
    name the block `index`. Returns the block."""
    where = "" if index is None else f"block {index} "
    if backend.unit == LINEAR:
        quantize_linears(block, backend, bits, where)
        return block
    if inputs is None:
        raise LwqError(f"quant={backend.name} needs the calibration inputs entering {where}block")
    try:
        if backend.unit == BLOCK:
            block = backend.quantize(block, bits, inputs, built=built)
        else:  # a window backend: a plan of this one block
            block = backend.quantize([block], (bits,), inputs)[0]
    except LwqError as err:
        raise LwqError(f"{where}{err}") from err
    return block if packed else backend.for_eval(block)


def quantize_linears(block: torch.nn.Module, backend: Backend, bits, where: str = "") -> None:
    """Quantize every linear of `block` (mutated: the backend's modules installed by name),
    all at `bits` or each at its own width (a tuple in `block_linears` order)."""
    linears = block_linears(block)
    widths = entry_widths(bits, len(linears), where.strip() or "a block")
    for (name, module), width in zip(linears, widths, strict=True):
        try:
            installed = backend.quantize(module, width)
        except LwqError as err:
            raise LwqError(f"{where}{name}: {err}") from err
        if installed is not module:
            block.set_submodule(name, installed)


def _on(block: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`block` on `device`: itself if it is there, else a copy (originals stay where they are)."""
    if next(block.parameters()).device == device:
        return block
    return copy.deepcopy(block).to(device)
