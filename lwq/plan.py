"""The plan: which bits each decoder block gets. Allocators make it, backends consume it,
every result record stores it.

Moving k of L blocks from b_hi to b_lo gives b_hi - (k/L)(b_hi - b_lo) nominal bits
(paper, Sec. 3), so 15 of 40 blocks at 2 bits with the rest at 4 is exactly 3.25.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from lwq.errors import LwqError


@dataclass(frozen=True)
class Plan:
    """Per-block bit-widths, indexed by block; 16 means left at full precision."""

    bits: tuple[int, ...]

    @property
    def avg_bits(self) -> float:
        """Nominal average bits per block, the paper's x-axis (scales not counted)."""
        return sum(self.bits) / len(self.bits)

    def low_blocks(self, low: int) -> list[int]:
        return [i for i, b in enumerate(self.bits) if b == low]

    def to_json(self) -> str:
        return json.dumps({"bits": list(self.bits)})

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls(tuple(int(b) for b in json.loads(text)["bits"]))


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
    every block (`0: 4`, `1: 2`, ...). Applied exactly; nothing is filled in."""
    path = Path(path)
    if not path.is_file():
        raise LwqError(f"plan file {path} not found; pass plan_file=<path to .yaml/.json>")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise LwqError(f"plan file {path} is not valid YAML/JSON: {err}") from err
    if isinstance(data, dict) and "bits" in data:
        return Plan(tuple(int(b) for b in data["bits"]))
    if isinstance(data, dict) and data:
        blocks = sorted(int(k) for k in data)
        if blocks != list(range(len(blocks))):
            raise LwqError(f"plan file {path} must give every block 0..N-1 once; got {blocks}")
        return Plan(tuple(int(data[k]) for k in sorted(data, key=int)))
    raise LwqError(f"plan file {path}: write `bits: [4, 2, ...]` or `0: 4` lines per block")
