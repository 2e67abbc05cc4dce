"""Properties of plans and the exact allocator on random score vectors, size tables and
budgets (hypothesis): the budget is never exceeded, every plan is valid, and the
allocator's choice is optimal against brute force on small cases."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lwq.allocate import allocate, average_bits_budget
from lwq.errors import LwqError
from lwq.metrics import Scores, ranking
from lwq.plan import Plan, blocks_for_fraction, sweep_points, two_level_plan

WIDTHS = (2, 3, 4, 8)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def orderings(draw, max_blocks: int = 48):
    """(scores, order, k, high, low): a ranking of random scores and a sweep point."""
    values = draw(st.lists(finite, min_size=1, max_size=max_blocks))
    scores = Scores(tuple(values), draw(st.booleans()))
    order = ranking(scores, reverse=draw(st.booleans()))
    k = draw(st.integers(0, len(values)))
    low, high = sorted(draw(st.lists(st.sampled_from((2, 3, 4, 8, 16)), min_size=2, max_size=2)))
    return scores, order, k, high, low


@given(orderings())
def test_two_level_plans_move_exactly_the_k_least_important_blocks(case):
    scores, order, k, high, low = case
    plan = two_level_plan(order, k, high=high, low=low)
    n = len(order)
    assert len(plan.bits) == n and set(plan.bits) <= {high, low}
    assert all(plan.bits[i] == low for i in order[:k])
    assert all(plan.bits[i] == high for i in order[k:])
    assert plan.avg_bits == pytest.approx(high - k / n * (high - low))
    assert Plan.from_json(plan.to_json()) == plan
    assert sorted(order) == list(range(n))  # a ranking is a permutation


@given(st.lists(finite, min_size=1, max_size=30), st.booleans())
def test_a_ranking_orders_by_importance_ties_to_the_lower_index(values, higher):
    order = ranking(Scores(tuple(values), higher))
    sign = 1 if higher else -1
    keys = [(sign * values[i], i) for i in order]
    assert keys == sorted(keys)


@given(st.integers(1, 200), st.lists(st.floats(0, 1), max_size=12))
def test_sweep_points_are_distinct_sorted_and_in_range(n, fractions):
    if not fractions:
        with pytest.raises(LwqError):
            sweep_points(n, fractions, None)
        return
    ks = sweep_points(n, fractions, None)
    assert ks == sorted(set(ks)) and all(0 <= k <= n for k in ks)
    assert all(blocks_for_fraction(f, n) in ks for f in fractions)


@given(st.integers(1, 200), st.floats(0, 1), st.floats(0, 1))
def test_more_of_the_model_never_means_fewer_low_blocks(n, a, b):
    lo, hi = sorted((a, b))
    assert blocks_for_fraction(lo, n) <= blocks_for_fraction(hi, n)


@st.composite
def allocation_problems(draw, max_blocks: int = 5):
    """Per-block cost and size tables over a random menu of widths, and a budget."""
    menu = sorted(draw(st.sets(st.sampled_from(WIDTHS), min_size=1, max_size=3)))
    n = draw(st.integers(1, max_blocks))
    cost = st.floats(0, 100, allow_nan=False)
    costs = [{b: draw(cost) for b in menu} for _ in range(n)]
    if draw(st.booleans()):  # sizes in bits (an average-bits budget) ...
        sizes = [{b: b for b in menu} for _ in range(n)]
    else:  # ... or arbitrary byte counts, not monotone in the width
        sizes = [{b: draw(st.integers(1, 1000)) for b in menu} for _ in range(n)]
    smallest = sum(min(s.values()) for s in sizes)
    largest = sum(max(s.values()) for s in sizes)
    budget = draw(st.integers(smallest - 3, largest + 3))
    return costs, sizes, budget


def _brute_force(costs, sizes, budget):
    """The smallest total cost of any plan within the budget (None if there is none)."""
    best = None
    menus = [sorted(c) for c in costs]
    for choice in itertools.product(*menus):
        if sum(sizes[i][b] for i, b in enumerate(choice)) <= budget:
            total = sum(costs[i][b] for i, b in enumerate(choice))
            best = total if best is None else min(best, total)
    return best


@settings(max_examples=300, deadline=None)
@given(allocation_problems())
def test_the_allocator_is_valid_within_budget_and_optimal(problem):
    costs, sizes, budget = problem
    best = _brute_force(costs, sizes, budget)
    if best is None:
        with pytest.raises(LwqError, match="below the smallest possible size"):
            allocate(costs, sizes, budget)
        return
    plan = allocate(costs, sizes, budget)
    assert len(plan.bits) == len(costs)
    assert all(b in costs[i] for i, b in enumerate(plan.bits))
    assert sum(sizes[i][b] for i, b in enumerate(plan.bits)) <= budget
    total = sum(costs[i][b] for i, b in enumerate(plan.bits))
    assert total == pytest.approx(best, abs=1e-9)


@given(st.integers(1, 64), st.integers(2, 16), st.integers(0, 100))
def test_an_average_bits_budget_admits_exactly_the_plans_at_or_below_it(n, bits, hundredths):
    avg = bits + hundredths / 100  # e.g. 3.25
    budget = average_bits_budget(avg, n)
    assert budget / n <= avg + 1e-9 and (budget + 1) / n > avg - 1e-9
