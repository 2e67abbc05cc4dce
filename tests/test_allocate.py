"""The exact allocator against brute force on synthetic sensitivity tables."""

import itertools
import random

import pytest

from lwq.allocate import allocate, average_bits_budget
from lwq.errors import LwqError

BITS = (2, 3, 4, 8)


def _table(n_blocks, seed):
    rng = random.Random(seed)
    costs = []
    for _ in range(n_blocks):
        base = rng.uniform(0.1, 5.0)  # lower bits always cost more, by a block-specific amount
        costs.append({b: base * rng.uniform(0.5, 1.5) / 2 ** (b - 2) for b in BITS})
    return costs


def _brute_force(costs, sizes, budget):
    best = None
    for choice in itertools.product(BITS, repeat=len(costs)):
        used = sum(sizes[i][b] for i, b in enumerate(choice))
        if used > budget:
            continue
        total = sum(costs[i][b] for i, b in enumerate(choice))
        if best is None or total < best[0] - 1e-12:
            best = (total, choice)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("avg_bits", [2.5, 3.25, 4.0, 5.5])
def test_matches_brute_force_on_average_bits(seed, avg_bits):
    n = 5
    costs = _table(n, seed)
    sizes = [{b: b for b in BITS} for _ in range(n)]
    budget = average_bits_budget(avg_bits, n)
    plan = allocate(costs, sizes, budget)
    total, _ = _brute_force(costs, sizes, budget)
    assert sum(plan.bits) <= budget and plan.avg_bits <= avg_bits
    assert sum(costs[i][b] for i, b in enumerate(plan.bits)) == pytest.approx(total, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_on_bytes_with_unequal_blocks(seed):
    rng = random.Random(100 + seed)
    costs = _table(4, seed)
    sizes = [{b: rng.randint(50, 150) * b + rng.randint(0, 40) for b in BITS} for _ in range(4)]
    budget = sum(s[4] for s in sizes)
    plan = allocate(costs, sizes, budget)
    total, _ = _brute_force(costs, sizes, budget)
    assert sum(sizes[i][b] for i, b in enumerate(plan.bits)) <= budget
    assert sum(costs[i][b] for i, b in enumerate(plan.bits)) == pytest.approx(total, abs=1e-12)


def test_budget_3_25_over_40_blocks_is_130_bits():
    assert average_bits_budget(3.25, 40) == 130


def test_an_impossible_budget_names_the_fix():
    with pytest.raises(LwqError, match="below the smallest possible size 10"):
        allocate(_table(5, 0), [{b: b for b in BITS} for _ in range(5)], 9)
