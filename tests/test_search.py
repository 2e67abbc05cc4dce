"""The evolutionary search without a model: every plan it scores stays within the budget
and is tight; it finds the brute-force optimum of a small synthetic problem with pairwise
interactions that the additive DP misses; multi-fidelity judges at the highest fidelity;
a killed search resumes to the same result; bad budgets and settings are refused."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lwq.allocate import allocate
from lwq.errors import LwqError
from lwq.search import Problem, SearchSettings, mutate, search, top_up

BITS = (2, 3, 4, 8)


def _synthetic(seed: int, n: int = 7):
    """(problem, damage, exact): unequal units, additive damage falling with bits, plus
    neighbour interactions w * d_i * d_j (two weak neighbours hurt more than their sum)."""
    rng = random.Random(seed)
    sizes = [rng.choice((100, 150, 200)) for _ in range(n)]
    cost = [{b: s * b // 8 * 8 + 16 for b in BITS} for s in sizes]  # bytes: weights + a scale
    damage = []
    for _ in range(n):
        values = sorted((rng.uniform(0.5, 3.0) * 2.0**-b for b in BITS), reverse=True)
        damage.append(dict(zip(BITS, values, strict=True)))
    weight = {(i, i + 1): rng.uniform(5, 40) for i in range(n - 1)}

    def exact(plan):
        alone = sum(damage[u][b] for u, b in enumerate(plan))
        pairs = sum(w * damage[i][plan[i]] * damage[j][plan[j]] for (i, j), w in weight.items())
        return alone + pairs

    low, high = sum(min(c.values()) for c in cost), sum(max(c.values()) for c in cost)
    return Problem(cost, low + (high - low) * 3 // 10), damage, exact


def _brute_force(problem, exact):
    feasible = [
        p
        for p in itertools.product(*(problem.levels(u) for u in range(len(problem.cost))))
        if problem.bytes(p) <= problem.budget
    ]
    return min(feasible, key=exact), len(feasible)


def _quick(**overrides):
    base = dict(generations=30, offspring=16, schedule=((1, 1),), seed=0, progress=False)
    return SearchSettings(**{**base, **overrides})


# --- 1. budget-keeping mutations (property) ---------------------------------------------


@st.composite
def problems(draw):
    """Random unit sizes, allowed levels and a budget anywhere in the reachable range."""
    n = draw(st.integers(1, 7))
    cost = []
    for _ in range(n):
        levels = sorted(draw(st.sets(st.sampled_from((2, 3, 4, 5, 6, 8, 16)), min_size=1)))
        per_bit = draw(st.integers(1, 400))
        overhead = draw(st.integers(0, 50))
        cost.append({b: per_bit * b + overhead for b in levels})
    low = sum(min(c.values()) for c in cost)
    high = sum(max(c.values()) for c in cost)
    return Problem(cost, draw(st.integers(low, high)))


@settings(max_examples=150, deadline=None)
@given(problems(), st.integers(0, 2**32 - 1), st.integers(1, 4))
def test_every_mutation_stays_within_the_budget_and_is_tight(problem, seed, raises):
    rng = random.Random(seed)
    parent = top_up(problem, problem.lowest())
    assert problem.is_tight(parent)
    for _ in range(20):
        child = mutate(problem, parent, raises, rng)
        if child is None:
            continue
        assert problem.bytes(child) <= problem.budget
        slack = problem.budget - problem.bytes(child)
        opens = [c for u in range(len(child)) if (c := problem.raise_cost(child, u)) is not None]
        assert all(c > slack for c in opens)  # the rule: unused bytes < every open raise
        assert all(b in problem.cost[u] for u, b in enumerate(child))
        parent = child


@settings(max_examples=40, deadline=None)
@given(problems(), st.integers(0, 1000))
def test_every_plan_the_search_scores_is_tight(problem, seed):
    scored = []

    def fitness(plan, stage):
        scored.append(plan)
        return random.Random(hash(plan)).random() + stage

    result = search(
        problem, fitness, _quick(generations=4, offspring=6, schedule=((1, 3), (2, 1)), seed=seed)
    )
    assert scored and all(problem.is_tight(p) for p in scored)
    assert result.bytes == problem.bytes(result.plan) <= problem.budget


def test_top_up_fills_the_budget_as_evenly_as_it_can():
    problem = Problem([{2: 2, 3: 3, 4: 4}] * 4, budget=13)
    assert top_up(problem, problem.lowest()) == (4, 3, 3, 3)  # all to 3 first, then unit 0


def test_tight_can_leave_more_than_the_smallest_step_unused():
    """Why the rule is per plan: the small unit is at its top, the big step does not fit."""
    problem = Problem([{2: 10, 3: 15}, {2: 100, 3: 200}], budget=160)
    plan = top_up(problem, problem.lowest())
    assert plan == (3, 2) and problem.budget - problem.bytes(plan) == 45  # > the 5 B step
    assert problem.is_tight(plan) and not problem.is_tight((2, 2))


# --- 2. the brute-force optimum, which the additive DP misses ------------------------------


@pytest.mark.parametrize("instance", [1, 7, 9])
def test_search_finds_the_brute_force_optimum_that_additive_dp_misses(instance):
    problem, damage, exact = _synthetic(instance)
    best, n_feasible = _brute_force(problem, exact)
    dp = allocate(damage, problem.cost, problem.budget).bits  # optimal for the additive part
    assert exact(dp) > exact(best) + 1e-3  # interactions matter: additive DP is not optimal

    result = search(problem, lambda plan, stage: exact(plan), _quick())
    assert result.plan == best
    assert result.fitness == exact(best) and result.bytes == problem.bytes(best)
    assert sum(result.calls) < n_feasible / 10  # it searched, it did not enumerate


def test_same_seed_same_result_and_the_seed_matters():
    problem, _, exact = _synthetic(7)
    runs = [
        search(problem, lambda p, s: exact(p), _quick(generations=5, seed=s)) for s in (3, 3, 4)
    ]
    assert runs[0] == runs[1]
    assert runs[0].history != runs[2].history


# --- 3. multi-fidelity ------------------------------------------------------------------


def test_low_fidelity_screens_and_the_highest_fidelity_judges():
    problem, _, exact = _synthetic(7)
    best, _ = _brute_force(problem, exact)
    calls, screened = Counter(), {}

    def fitness(plan, stage):
        calls[(plan, stage)] += 1
        if stage == 1:
            return exact(plan)  # many tokens: exact
        screened[plan] = exact(plan) + random.Random(str(plan)).gauss(0, 0.3)  # few: noisy
        return screened[plan]

    run = _quick(generations=40, offspring=16, schedule=((256, 4), (4096, 1)))
    result = search(problem, fitness, run)

    assert result.plan == best and result.fitness == exact(best)  # judged exactly
    assert min(screened, key=screened.get) != best  # the noisy screen alone would miss it
    assert max(calls.values()) == 1  # never twice at one fidelity
    per_stage = [sum(1 for _, s in calls if s == i) for i in (0, 1)]
    assert list(result.calls) == per_stage
    assert [sum(g.evaluations[i] for g in result.history) for i in (0, 1)] == per_stage
    assert per_stage[1] <= run.generations * 4 + 1 < per_stage[0]  # survivors + parent only
    assert all(g.best_fitness >= h.best_fitness for g, h in itertools.pairwise(result.history))


# --- 4. kill and resume -------------------------------------------------------------------


class Killed(Exception):
    pass


def _counting(exact, kill_at=None):
    """A fitness that records its calls and raises at call number `kill_at` (1-based)."""
    seen = []

    def fitness(plan, stage):
        seen.append((plan, stage))
        if len(seen) == kill_at:
            raise Killed
        return exact(plan) + (0.01 * stage)

    return fitness, seen


def test_a_killed_search_resumes_to_the_uninterrupted_result(tmp_path):
    problem, _, exact = _synthetic(1)
    run = _quick(generations=12, offspring=8, schedule=((64, 3), (512, 1)), seed=5)
    whole_fitness, whole_calls = _counting(exact)
    whole = search(problem, whole_fitness, run, checkpoint=tmp_path / "whole.json")

    k = 6  # kill in the middle of generation k + 1, after generation k was saved
    done = sum(sum(g.evaluations) for g in whole.history[:k])
    assert sum(whole.history[k].evaluations) >= 2
    path = tmp_path / "search.json"
    killed, _ = _counting(exact, kill_at=done + 2)
    with pytest.raises(Killed):
        search(problem, killed, run, checkpoint=path)
    assert json.loads(path.read_text())["generation"] == k

    resumed_fitness, resumed_calls = _counting(exact)
    resumed = search(problem, resumed_fitness, run, checkpoint=path)
    assert resumed == whole  # plan, fitness, bytes, history and calls per fidelity
    assert resumed_calls == whole_calls[done:]  # generations 1..k were not run again
    assert not list(tmp_path.glob(".*.tmp"))

    again_fitness, again_calls = _counting(exact)
    assert search(problem, again_fitness, run, checkpoint=path) == whole and again_calls == []


def test_a_finished_checkpoint_extends_to_more_generations(tmp_path):
    problem, _, exact = _synthetic(3)
    fitness = lambda plan, stage: exact(plan)  # noqa: E731
    whole = search(problem, fitness, _quick(generations=8))
    path = tmp_path / "s.json"
    search(problem, fitness, _quick(generations=3), checkpoint=path)
    assert search(problem, fitness, _quick(generations=8), checkpoint=path) == whole


def test_a_checkpoint_of_another_problem_is_refused(tmp_path):
    problem, _, exact = _synthetic(3)
    path = tmp_path / "s.json"
    search(problem, lambda p, s: exact(p), _quick(generations=2), checkpoint=path)
    with pytest.raises(LwqError, match="another problem.*delete it"):
        search(problem, lambda p, s: exact(p), _quick(generations=2, seed=9), checkpoint=path)
    with pytest.raises(LwqError, match="2 generations, more than generations=1"):
        search(problem, lambda p, s: exact(p), _quick(generations=1), checkpoint=path)
    path.write_text("{")
    with pytest.raises(LwqError, match="unreadable"):
        search(problem, lambda p, s: exact(p), _quick(generations=2), checkpoint=path)


def test_progress_bar_counts_generations(capsys):
    problem, _, exact = _synthetic(3)
    search(problem, lambda p, s: exact(p), _quick(generations=3, progress=True))
    err = capsys.readouterr().err
    assert "search" in err and "3/3" in err and "best=" in err
    search(problem, lambda p, s: exact(p), _quick(generations=3, progress=False))
    assert capsys.readouterr().err == ""


# --- 5. refusals ---------------------------------------------------------------------------

UNITS = [{2: 100, 4: 200}, {2: 300, 4: 600}]  # all-lowest 400 B, all-highest 800 B


@pytest.mark.parametrize(
    "budget, message",
    [
        (
            399,
            r"budget 399 B is below the all-lowest plan \(100 \+ 300 = 400 B; all-highest "
            r"200 \+ 600 = 800 B\); raise the budget into reachable: 400\.\.800 B",
        ),
        (
            801,
            r"budget 801 B is above the all-highest plan \(200 \+ 600 = 800 B; all-lowest "
            r"100 \+ 300 = 400 B\), nothing to search; lower it into reachable: 400\.\.800 B",
        ),
    ],
)
def test_budgets_outside_the_reachable_range_are_refused_with_the_arithmetic(budget, message):
    with pytest.raises(LwqError, match=message):
        Problem(UNITS, budget)
    Problem(UNITS, 400), Problem(UNITS, 800)  # the ends are fine


def test_many_units_show_a_short_sum():
    with pytest.raises(LwqError, match=r"1 \+ 1 \+ 1 \+ 1 \+ 1 \+ 1 \+ \.\.\. = 9 B"):
        Problem([{2: 1, 3: 2}] * 9, 8)


@pytest.mark.parametrize(
    "cost, message",
    [
        ([], "no units"),
        ([{}], "unit 0 has no allowed bit-widths"),
        ([{2: 100, 4: 50}], "unit 0: 4 bits cost 50 B, less than 2 bits at 100 B"),
    ],
)
def test_malformed_costs_are_refused(cost, message):
    with pytest.raises(LwqError, match=message):
        Problem(cost, 100)


def test_a_budget_in_fractions_of_bytes_is_refused():
    with pytest.raises(LwqError, match="budget 450.5 is not a whole number of bytes"):
        Problem(UNITS, 450.5)


@pytest.mark.parametrize(
    "start, message",
    [
        ((4, 4), r"start plan needs 800 B, 200 B above the budget 600 B"),
        ((2,), "start plan has 1 units but the problem has 2"),
        ((3, 2), r"unit 0 3 bits; allowed: \(2, 4\)"),
    ],
)
def test_bad_start_plans_are_refused(start, message):
    with pytest.raises(LwqError, match=message):
        search(Problem(UNITS, 600), lambda p, s: 0.0, _quick(), start=start)


def test_a_start_with_room_is_topped_up_and_scored():
    scored = []
    result = search(
        Problem(UNITS, 600),
        lambda p, s: scored.append(p) or -sum(p),
        _quick(generations=1),
        start=(2, 2),
    )
    assert scored[-1] == (4, 2) and result.plan == (4, 2)  # 100 B raise fits, 300 B does not


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(schedule=()), "schedule is empty"),
        (dict(offspring=4, schedule=((64, 8), (512, 1))), "keeps 8 survivors of the 4 candidates"),
        (dict(schedule=((64, 4), (512, 6), (1024, 1))), "stage 1 keeps 6 survivors of the 4"),
        (dict(schedule=((64, 4), (512, 2))), "last stage keeps 2 survivors; .* set it to 1"),
        (dict(schedule=((512, 4), (64, 1))), "uses 64 tokens, not more than stage 0's 512"),
        (dict(schedule=((0, 1),)), r"stage 0 is \(0, 1\); both must be >= 1"),
        (dict(schedule=(64, 1)), "not a list of \\(tokens, survivors\\) pairs"),
        (dict(generations=0), "generations=0 must be an integer >= 1"),
        (dict(generations=True), "generations=True must be an integer >= 1"),
        (dict(offspring=-1), "offspring=-1 must be an integer >= 1"),
        (dict(max_raises=0), "max_raises=0 must be an integer >= 1"),
        (dict(seed="x"), "seed='x' must be an integer"),
    ],
)
def test_bad_settings_are_refused_in_one_line(overrides, message):
    with pytest.raises(LwqError, match=message) as caught:
        _quick(**overrides)
    assert "\n" not in str(caught.value)


def test_a_nan_fitness_is_refused():
    with pytest.raises(LwqError, match="fitness returned nan"):
        search(Problem(UNITS, 600), lambda p, s: float("nan"), _quick())
