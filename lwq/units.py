"""Allocation units: what one decision of the allocator or the search covers
(`allocate.unit`).

- block: all linears of a block (the paper's unit).
- sublayer: the linears under one child of the block, e.g. `self_attn.*` vs `mlp.*`
  (found by name, so any family's naming works).
- linear: each linear alone, except linears tied by `allocate.ties`: groups of short
  names (`q_proj`, `k_proj`, `v_proj`) whose members in one block share one width.
  Engines that fuse q/k/v and gate/up into one layer (vLLM, exllama) refuse mixed bits
  inside it, so those ties are the default when the budget counts a GPTQ file.

A plan over units becomes an ordinary `Plan` whose mixed blocks hold one width per
linear (lwq.plan); a unit plan that is uniform in a block is that block's plain width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lwq.errors import LwqError
from lwq.plan import FULL_PRECISION, Plan, entry_widths

KINDS = ("block", "sublayer", "linear")
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # vLLM's fused layers


@dataclass(frozen=True)
class Unit:
    block: int
    linears: tuple[int, ...]  # positions in the block's `block_linears`
    name: str  # "3", "3.mlp", "3.q_proj+k_proj+v_proj"


def short(name: str) -> str:
    """A linear's name inside its parent: `self_attn.q_proj` -> `q_proj`."""
    return name.rsplit(".", 1)[-1]


def make_units(
    linear_names: Sequence[Sequence[str]], kind: str, ties: Sequence[Sequence[str]] = ()
) -> list[Unit]:
    """The units of a model whose block i holds `linear_names[i]`, in block order."""
    if kind not in KINDS:
        raise LwqError(f"allocate.unit must be one of {', '.join(KINDS)}, got {kind!r}")
    units: list[Unit] = []
    for i, names in enumerate(linear_names):
        if kind == "block":
            groups = {str(i): list(range(len(names)))}
        elif kind == "sublayer":
            groups = {}
            for j, name in enumerate(names):
                parent = name.rsplit(".", 1)[0] if "." in name else name
                groups.setdefault(f"{i}.{parent}", []).append(j)
        else:
            groups = {}
            for j, name in enumerate(names):
                tie = next((t for t in ties if short(name) in t), None)
                members = [short(n) for n in names if tie is not None and short(n) in tie]
                label = "+".join(members) if tie is not None else short(name)
                groups.setdefault(f"{i}.{label}", []).append(j)
        units += [Unit(i, tuple(js), label) for label, js in groups.items()]
    return units


def check_ties(linear_names: Sequence[str], ties: Sequence[Sequence[str]]) -> None:
    """Refuse a tie group that names fewer than two of a block's linears (a typo would
    otherwise leave those linears untied without a word)."""
    shorts = [short(n) for n in linear_names]
    for tie in ties:
        found = [n for n in tie if n in shorts]
        if len(found) < 2:
            raise LwqError(
                f"allocate.ties group {list(tie)} names {len(found)} of this model's linears "
                f"({', '.join(shorts)}); give groups of at least two of them, or ties=[]"
            )


def plan_of(units: Sequence[Unit], unit_bits: Sequence[int], n_linears: Sequence[int]) -> Plan:
    """The plan giving each unit its width (`unit_bits[u]`); linears no unit covers stay
    at 16."""
    if len(units) != len(unit_bits):
        raise ValueError(f"{len(unit_bits)} widths for {len(units)} units")
    widths = [[FULL_PRECISION] * n for n in n_linears]
    for unit, bits in zip(units, unit_bits, strict=True):
        for j in unit.linears:
            widths[unit.block][j] = bits
    return Plan(tuple(tuple(w) for w in widths))


def unit_bits_of(plan: Plan, units: Sequence[Unit], n_linears: Sequence[int]) -> tuple[int, ...]:
    """Each unit's width under `plan`; refused when a unit's linears differ in it."""
    out = []
    for unit in units:
        widths = entry_widths(plan.bits[unit.block], n_linears[unit.block], f"block {unit.block}")
        inside = {widths[j] for j in unit.linears}
        if len(inside) != 1:
            raise LwqError(f"the plan gives unit {unit.name} several widths {sorted(inside)}")
        out.append(inside.pop())
    return tuple(out)


def linear_counts(units: Sequence[Unit], n_blocks: int | None = None) -> list[int]:
    """How many linears each block holds, from the units covering them."""
    n_blocks = max(u.block for u in units) + 1 if n_blocks is None else n_blocks
    return [sum(len(u.linears) for u in units if u.block == i) for i in range(n_blocks)]


def tied_labels(units: Sequence[Unit]) -> list[str]:
    """The tie groups the units apply (`q_proj+k_proj+v_proj`), each once."""
    return sorted({u.name.split(".", 1)[1] for u in units if "+" in u.name})


def alone(units: Sequence[Unit], u: int, bits: int, n_linears: Sequence[int]) -> Plan:
    """Unit u at `bits`, everything else at 16: what its sensitivity measures."""
    return plan_of(
        units, [bits if k == u else FULL_PRECISION for k in range(len(units))], n_linears
    )
