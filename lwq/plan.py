"""The plan: which bits each decoder block gets. Allocators make it, backends consume it,
every result record stores it.

Moving k of L blocks from b_hi to b_lo gives b_hi - (k/L)(b_hi - b_lo) nominal bits
(paper, Sec. 3), so 15 of 40 blocks at 2 bits with the rest at 4 is exactly 3.25.

A block's entry is one width for all its linears, or (finer units, lwq.units) a tuple of
widths, one per linear in `block_linears` order. A tuple whose widths are all equal is
stored as that one width, so a finer plan that happens to be uniform in a block shares
that block's variants, keys and records with block plans.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from lwq.errors import LwqError

FULL_PRECISION = 16  # "16 bits" means a block or linear is left as loaded (fp16/bf16)
Widths = int | tuple[int, ...]  # one block's entry: one width, or one per linear


@dataclass(frozen=True)
class Plan:
    """Per-block bit-widths, indexed by block; 16 means left at full precision. An entry
    may be a tuple: one width per linear of the block (see the module)."""

    bits: tuple[Widths, ...]

    def __post_init__(self):
        object.__setattr__(self, "bits", tuple(_entry(b) for b in self.bits))

    @property
    def mixed(self) -> bool:
        """Some block holds linears at different widths (a finer unit's plan)."""
        return any(isinstance(b, tuple) for b in self.bits)

    @property
    def avg_bits(self) -> float:
        """Nominal average bits per block, the paper's x-axis (scales not counted). A mixed
        plan's average needs the linears' sizes: SizeTable.cost gives it."""
        if self.mixed:
            raise ValueError("a plan with mixed blocks has no shape-free average; use SizeTable")
        return sum(self.bits) / len(self.bits)

    def widths(self, i: int, n_linears: int) -> tuple[int, ...]:
        """Block i's width for each of its `n_linears` linears."""
        return entry_widths(self.bits[i], n_linears, f"block {i}")

    def all_widths(self) -> set[int]:
        """Every width the plan uses, in any block or linear."""
        return {b for entry in self.bits for b in (entry if isinstance(entry, tuple) else (entry,))}

    def low_blocks(self, low: int) -> list[int]:
        return [i for i, b in enumerate(self.bits) if b == low]

    def as_list(self) -> list:
        """The plan as JSON holds it: ints, and lists for mixed blocks."""
        return [list(b) if isinstance(b, tuple) else b for b in self.bits]

    def to_json(self) -> str:
        return json.dumps({"bits": self.as_list()})

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls(tuple(json.loads(text)["bits"]))


def entry_widths(entry: Widths, n_linears: int, where: str = "a block") -> tuple[int, ...]:
    """One block entry's width for each of its `n_linears` linears."""
    if isinstance(entry, int):
        return (entry,) * n_linears
    if len(entry) != n_linears:
        raise LwqError(f"the plan gives {where} {len(entry)} widths; it has {n_linears} linears")
    return entry


def _entry(value) -> Widths:
    """A block's entry as stored: an int, or a tuple of ints when its widths differ."""
    if isinstance(value, list | tuple):
        widths = tuple(int(b) for b in value)
        if not widths:
            raise LwqError("a plan's block entry lists no widths; give one per linear")
        return widths[0] if len(set(widths)) == 1 else widths
    return int(value)


def blocks_for_fraction(fraction: float, n_blocks: int) -> int:
    """Number of blocks moved low for a fraction in [0, 1] (rounded half up)."""
    if not 0.0 <= fraction <= 1.0:
        raise LwqError(f"fraction {fraction} is outside [0, 1]; give fractions like 0.25")
    return math.floor(fraction * n_blocks + 0.5)


def two_level_plan(order: list[int], k: int, *, high: int, low: int) -> Plan:
    """The paper's plan: the first `k` blocks of `order` (least important first) at `low`."""
    n = len(order)
    if sorted(order) != list(range(n)):
        raise LwqError(f"ranking must be a permutation of 0..{n - 1}, got {order}")
    if not 0 <= k <= n:
        raise LwqError(f"cannot move {k} of {n} blocks to low bits; use 0..{n}")
    if low > high:
        raise LwqError(f"sweep.low={low} is above sweep.high={high}; swap them")
    bits = [high] * n
    for block in order[:k]:
        bits[block] = low
    return Plan(tuple(bits))


def sweep_points(n_blocks: int, fractions: list[float] | None, blocks: list[int] | None):
    """Sorted distinct k values of a sweep, from explicit block counts or from fractions."""
    if blocks is not None:
        bad = [k for k in blocks if not 0 <= k <= n_blocks]
        if bad:
            raise LwqError(f"sweep.blocks has {bad}, outside 0..{n_blocks} for this model")
        return sorted(set(blocks))
    if not fractions:
        raise LwqError("sweep.fractions is empty; give e.g. [0, 0.5, 1] or set sweep.blocks")
    return sorted({blocks_for_fraction(f, n_blocks) for f in fractions})


def read_plan_file(path: Path) -> Plan:
    """A hand-edited plan: YAML or JSON, either `bits: [4, 2, ...]` or `{block: bits}` for
    every block (`0: 4`, `1: 2`, ...); a block's entry may be a list with one width per
    linear, in the order records' `linear_names` give. Applied exactly; nothing is filled in."""
    path = Path(path)
    if not path.is_file():
        raise LwqError(f"plan file {path} not found; pass plan_file=<path to .yaml/.json>")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise LwqError(f"plan file {path} is not valid YAML/JSON: {err}") from err
    if isinstance(data, dict) and "bits" in data:
        return Plan(tuple(data["bits"]))
    if isinstance(data, dict) and data:
        blocks = sorted(int(k) for k in data)
        if blocks != list(range(len(blocks))):
            raise LwqError(f"plan file {path} must give every block 0..N-1 once; got {blocks}")
        return Plan(tuple(data[k] for k in sorted(data, key=int)))
    raise LwqError(f"plan file {path}: write `bits: [4, 2, ...]` or `0: 4` lines per block")
