"""Exact bit allocation under a budget: per-block bits minimising the summed sensitivity.

A multiple-choice knapsack solved exactly by dynamic programming over blocks that keeps
only the Pareto frontier of (size used, cost) states: a state that uses more budget for a
higher cost can never end in a better plan, since every block's options add to each
state alike. Sizes are integers (bits, or bytes), so the frontier stays small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from lwq.errors import LwqError
from lwq.plan import Plan


def allocate(
    costs: Sequence[Mapping[int, float]], sizes: Sequence[Mapping[int, int]], budget: int
) -> Plan:
    """The plan minimising sum(costs[i][bits_i]) subject to sum(sizes[i][bits_i]) <= budget.

    `costs[i]` and `sizes[i]` map each allowed bit-width of block i to its cost and size.
    Ties go to the plan that uses less budget, then to the lexicographically smaller bits.
    """
    if len(costs) != len(sizes):
        raise ValueError(f"{len(costs)} cost rows but {len(sizes)} size rows")
    frontier: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for block, (cost, size) in enumerate(zip(costs, sizes, strict=True)):
        if set(cost) != set(size):
            raise ValueError(f"block {block}: costs and sizes name different bit-widths")
        grown = [
            (used + size[bits], total + cost[bits], (*chosen, bits))
            for used, total, chosen in frontier
            for bits in sorted(cost)
            if used + size[bits] <= budget
        ]
        frontier = _pareto(grown)
        if not frontier:
            smallest = sum(min(s.values()) for s in sizes)
            raise LwqError(
                f"budget {budget} is below the smallest possible size {smallest}; "
                "raise the budget or allow a lower bit-width"
            )
    best = min(frontier, key=lambda state: (state[1], state[0], state[2]))
    return Plan(best[2])


def _pareto(states):
    """States sorted by size whose cost is strictly below every smaller-or-equal one."""
    kept, best_cost = [], math.inf
    for state in sorted(states, key=lambda s: (s[0], s[1], s[2])):
        if state[1] < best_cost:
            kept.append(state)
            best_cost = state[1]
    return kept


def average_bits_budget(avg_bits: float, n_blocks: int) -> int:
    """Total block-bits allowed by an average (a float like 3.25), exact for integer widths."""
    return math.floor(avg_bits * n_blocks + 1e-9)
