"""Evolutionary search over per-unit bit levels at an exact byte budget (after EvoPress,
Sieberling et al., ICML 2025). Pure: the fitness is a callable; no model lives here.

The algorithm, one parent, `generations` times:
1. Offspring: `offspring` distinct children of the parent, each by one budget-keeping
   mutation: r one-level raises of random units (r drawn from 1..max_raises, biased to few
   as EvoPress does: the smaller of two uniform draws), lower other units one level at a time
   until the plan fits the budget again, then refill: raise random units one level while
   any one-level raise still fits.
2. Multi-fidelity selection: stage i scores every candidate with `fitness(plan, i)` and keeps
   the schedule's `survivors` best; the parent joins at the last stage (elitism), whose one
   survivor is the next parent. Ties go to the earlier candidate (offspring before the
   parent), so the search can drift across plateaus.
3. Every (plan, fidelity) is scored once: scores are cached, so the fitness must be a
   function of (plan, fidelity) alone (fixed tokens per fidelity; EvoPress instead draws a
   fresh minibatch per selection). The result is the last parent, judged at the highest
   fidelity: the best plan any generation scored there.

Exactness rule: every plan the search scores (start, children, result) is *tight*: its
bytes are at most the budget, and no single unit can rise one level without going over it,
i.e. unused bytes < the smallest one-level raise still open in that plan. With equal units
and unit steps this leaves no byte unused; with unequal units it is the most a budget can
promise (a global "smaller than any step" rule is unreachable when the small units are
already at their top). It assumes more bits never hurt, so some best plan is tight.

A plan is a tuple of bits per unit. Without a start plan, and to make a given one tight,
`top_up` raises, one level at a time, the fitting unit at the lowest bits (ties: the
cheapest step, then the lowest index): the nearest to a uniform bit-width. Resuming: after
every generation the state (generation, parent, best, cache, calls, RNG) is written
atomically as JSON; a run given the same path continues from it to the same result.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from lwq.errors import LwqError

Plan = tuple[int, ...]
Fitness = Callable[[Plan, int], float]
_TRIES_PER_CHILD = 20  # mutations tried per wanted child before a generation makes do with fewer


@dataclass(frozen=True)
class Problem:
    """`cost[u][bits]`: bytes of unit u at each allowed bit-width; `budget`: bytes for all."""

    cost: tuple[Mapping[int, int], ...]
    budget: int

    def __post_init__(self):
        rows = tuple({int(b): int(c) for b, c in sorted(row.items())} for row in self.cost)
        object.__setattr__(self, "cost", rows)
        _check_problem(self)

    def levels(self, unit: int) -> tuple[int, ...]:
        return tuple(self.cost[unit])

    def bytes(self, plan: Sequence[int]) -> int:
        return sum(self.cost[u][b] for u, b in enumerate(plan))

    def lowest(self) -> Plan:
        return tuple(min(row) for row in self.cost)

    def highest(self) -> Plan:
        return tuple(max(row) for row in self.cost)

    def step(self, unit: int, bits: int, by: int) -> int | None:
        """The bits one level up (by=1) or down (by=-1) from `bits`, None past the end."""
        levels = self.levels(unit)
        at = levels.index(bits) + by
        return levels[at] if 0 <= at < len(levels) else None

    def raise_cost(self, plan: Plan, unit: int) -> int | None:
        """Bytes one level up on `unit` would add; None at its top level."""
        up = self.step(unit, plan[unit], 1)
        return None if up is None else self.cost[unit][up] - self.cost[unit][plan[unit]]

    def fitting_raises(self, plan: Plan) -> list[int]:
        """Units whose one-level raise still fits the budget: empty means the plan is tight."""
        slack = self.budget - self.bytes(plan)
        return [
            u
            for u in range(len(plan))
            if (c := self.raise_cost(plan, u)) is not None and c <= slack
        ]

    def is_tight(self, plan: Plan) -> bool:
        """The exactness rule: within the budget, and no one-level raise fits."""
        return self.bytes(plan) <= self.budget and not self.fitting_raises(plan)


def _sum_line(values: list[int]) -> str:
    """'100 + 200 + ... = 900' with at most six terms shown."""
    terms = " + ".join(map(str, values[:6])) + (" + ..." if len(values) > 6 else "")
    return f"{terms} = {sum(values)} B"


def _check_problem(problem: Problem) -> None:
    """One-line refusals, each with the arithmetic and the fix."""
    if not problem.cost:
        raise LwqError("the search has no units; give a byte cost per bit-width for each unit")
    if isinstance(problem.budget, bool) or not isinstance(problem.budget, int):
        raise LwqError(f"budget {problem.budget!r} is not a whole number of bytes; give an int")
    for u, row in enumerate(problem.cost):
        if not row:
            raise LwqError(f"unit {u} has no allowed bit-widths; give at least one")
        pairs = list(row.items())
        for (b0, c0), (b1, c1) in zip(pairs, pairs[1:], strict=False):
            if c1 < c0:
                raise LwqError(
                    f"unit {u}: {b1} bits cost {c1} B, less than {b0} bits at {c0} B; "
                    "byte costs must not fall as bits rise"
                )
    low = [min(row.values()) for row in problem.cost]
    high = [max(row.values()) for row in problem.cost]
    reach = f"reachable: {sum(low)}..{sum(high)} B"
    if problem.budget < sum(low):
        raise LwqError(
            f"budget {problem.budget} B is below the all-lowest plan ({_sum_line(low)}; "
            f"all-highest {_sum_line(high)}); raise the budget into {reach} or allow lower bits"
        )
    if problem.budget > sum(high):
        raise LwqError(
            f"budget {problem.budget} B is above the all-highest plan ({_sum_line(high)}; "
            f"all-lowest {_sum_line(low)}), nothing to search; lower it into {reach}"
        )


@dataclass(frozen=True)
class SearchSettings:
    """How long and how wide to search; `schedule` is (tokens, survivors) per fidelity stage,
    tokens rising (the fitness gets the stage's index; the caller maps it to tokens)."""

    generations: int = 50
    offspring: int = 16
    schedule: tuple[tuple[int, int], ...] = ((2048, 4), (16384, 1))
    max_raises: int = 3  # units raised per mutation: 1..max_raises, few more likely
    seed: int = 0
    progress: bool = True  # a tqdm bar over generations (stderr)

    def __post_init__(self):
        try:
            stages = tuple((int(t), int(s)) for t, s in self.schedule)
        except (TypeError, ValueError):
            raise LwqError(
                f"search schedule {self.schedule!r} is not a list of (tokens, survivors) "
                "pairs; give e.g. [[2048, 4], [16384, 1]]"
            ) from None
        object.__setattr__(self, "schedule", stages)
        _check_counts(self)
        _check_schedule(self.schedule, self.offspring)


def _check_counts(settings: SearchSettings) -> None:
    for name in ("generations", "offspring", "max_raises"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LwqError(f"search {name}={value!r} must be an integer >= 1; give e.g. 8")
    if not isinstance(settings.seed, int):
        raise LwqError(f"search seed={settings.seed!r} must be an integer; give e.g. 0")


def _check_schedule(schedule: tuple[tuple[int, int], ...], offspring: int) -> None:
    if not schedule:
        raise LwqError(
            "search schedule is empty; give (tokens, survivors) stages, e.g. [[2048, 1]]"
        )
    entering = offspring
    for i, (tokens, survivors) in enumerate(schedule):
        last = i == len(schedule) - 1
        if tokens < 1 or survivors < 1:
            raise LwqError(
                f"search schedule stage {i} is ({tokens}, {survivors}); both must be >= 1"
            )
        if i and tokens <= schedule[i - 1][0]:
            raise LwqError(
                f"search schedule stage {i} uses {tokens} tokens, not more than stage {i - 1}'s "
                f"{schedule[i - 1][0]}; make tokens rise stage to stage"
            )
        if last and survivors != 1:
            raise LwqError(
                f"search schedule's last stage keeps {survivors} survivors; it picks the next "
                "parent, set it to 1"
            )
        if not last and survivors > entering:
            raise LwqError(
                f"search schedule stage {i} keeps {survivors} survivors of the {entering} "
                f"candidates entering it; lower survivors to <= {entering} or raise offspring"
            )
        entering = survivors


@dataclass(frozen=True)
class Generation:
    """One generation: the parent's fitness after it (highest fidelity), the fitness calls it
    made per fidelity, and how many distinct children the mutations found."""

    generation: int
    best_fitness: float
    evaluations: tuple[int, ...]
    offspring: int


@dataclass(frozen=True)
class SearchResult:
    plan: Plan
    fitness: float  # at the highest fidelity
    bytes: int
    history: tuple[Generation, ...]
    calls: tuple[int, ...]  # fitness calls per fidelity, over the whole run (resumes included)


@dataclass
class _State:
    """What a checkpoint holds: enough to continue exactly where a generation ended."""

    generation: int
    parent: Plan
    rng: random.Random
    cache: dict[tuple[int, Plan], float]
    calls: list[int]
    history: list[Generation] = field(default_factory=list)


def top_up(problem: Problem, plan: Sequence[int]) -> Plan:
    """`plan` made tight by one-level raises of the fitting unit at the lowest bits (ties: the
    cheapest step, then the lowest index): deterministic, and near a uniform bit-width."""
    plan = tuple(plan)
    while fits := problem.fitting_raises(plan):
        unit = min(fits, key=lambda u: (plan[u], problem.raise_cost(plan, u), u))
        plan = _moved(problem, plan, unit, 1)
    return plan


def _moved(problem: Problem, plan: Plan, unit: int, by: int) -> Plan:
    return plan[:unit] + (problem.step(unit, plan[unit], by),) + plan[unit + 1 :]


def mutate(problem: Problem, parent: Plan, raises: int, rng: random.Random) -> Plan | None:
    """A tight child of a feasible parent: `raises` one-level raises, one-level lowerings of
    other units until it fits, then raises while any fits. None when no lowering can pay."""
    child, raised = parent, set()
    for _ in range(raises):
        open_ = [u for u in range(len(child)) if problem.step(u, child[u], 1) is not None]
        if not open_:
            return None
        unit = rng.choice(open_)
        child, raised = _moved(problem, child, unit, 1), raised | {unit}
    while problem.bytes(child) > problem.budget:
        lowerable = [
            u
            for u in range(len(child))
            if u not in raised and problem.step(u, child[u], -1) is not None
        ]
        if not lowerable:
            return None
        child = _moved(problem, child, rng.choice(lowerable), -1)
    while fits := problem.fitting_raises(child):
        child = _moved(problem, child, rng.choice(fits), 1)
    return child


def _children(
    problem: Problem, parent: Plan, settings: SearchSettings, rng: random.Random
) -> list[Plan]:
    """Up to `offspring` distinct children, none equal to the parent, in the order found."""
    children, seen = [], {parent}
    for _ in range(settings.offspring * _TRIES_PER_CHILD):
        if len(children) == settings.offspring:
            break
        raises = min(rng.randint(1, settings.max_raises), rng.randint(1, settings.max_raises))
        child = mutate(problem, parent, raises, rng)
        if child is not None and child not in seen:
            seen.add(child)
            children.append(child)
    return children


def _score(state: _State, fitness: Fitness, plan: Plan, stage: int) -> float:
    """fitness(plan, stage), computed once per (plan, stage) over the whole run."""
    key = (stage, plan)
    if key not in state.cache:
        value = float(fitness(plan, stage))
        if math.isnan(value):
            raise LwqError(
                f"fitness returned nan for plan {list(plan)} at fidelity {stage}; "
                "return a number (lower is better)"
            )
        state.cache[key] = value
        state.calls[stage] += 1
    return state.cache[key]


def _generation(state: _State, problem: Problem, fitness: Fitness, settings: SearchSettings):
    """Mutate, select stage by stage (the parent joins the last stage), move the parent."""
    before = list(state.calls)
    children = _children(problem, state.parent, settings, state.rng)
    candidates, last = children, len(settings.schedule) - 1
    for stage, (_, survivors) in enumerate(settings.schedule):
        if stage == last:
            candidates = [*candidates, state.parent]
        scored = sorted(
            (_score(state, fitness, plan, stage), i) for i, plan in enumerate(candidates)
        )
        candidates = [candidates[i] for _, i in scored[:survivors]]
    state.parent = candidates[0]
    state.generation += 1
    state.history.append(
        Generation(
            generation=state.generation,
            best_fitness=state.cache[(last, state.parent)],
            evaluations=tuple(n - b for n, b in zip(state.calls, before, strict=True)),
            offspring=len(children),
        )
    )


def search(
    problem: Problem,
    fitness: Fitness,
    settings: SearchSettings,
    *,
    start: Sequence[int] | None = None,
    checkpoint: Path | str | None = None,
) -> SearchResult:
    """The best tight plan found; `fitness(plan, stage)` is lower-better and deterministic.

    `start` (feasible; topped up if not tight) defaults to `top_up` of the all-lowest plan.
    With `checkpoint`, each generation's end is saved there and a later call resumes from it.
    """
    first = top_up(problem, _checked_start(problem, start))
    identity = _fingerprint(problem, settings, first)
    path = Path(checkpoint) if checkpoint is not None else None
    state = _load(path, identity, settings) if path and path.exists() else None
    state = state or _State(
        0, first, random.Random(settings.seed), {}, [0] * len(settings.schedule)
    )
    bar = tqdm(
        total=settings.generations,
        initial=state.generation,
        desc="search",
        unit="gen",
        disable=not settings.progress,
    )
    with bar:
        while state.generation < settings.generations:
            _generation(state, problem, fitness, settings)
            if path:
                _save(path, state, identity)
            bar.update(1)
            bar.set_postfix(best=f"{state.history[-1].best_fitness:.4g}")
    last = len(settings.schedule) - 1
    return SearchResult(
        plan=state.parent,
        fitness=state.cache[(last, state.parent)],
        bytes=problem.bytes(state.parent),
        history=tuple(state.history),
        calls=tuple(state.calls),
    )


def _checked_start(problem: Problem, start: Sequence[int] | None) -> Plan:
    if start is None:
        return problem.lowest()
    start = tuple(int(b) for b in start)
    if len(start) != len(problem.cost):
        raise LwqError(
            f"start plan has {len(start)} units but the problem has "
            f"{len(problem.cost)}; give one bit-width per unit"
        )
    for u, bits in enumerate(start):
        if bits not in problem.cost[u]:
            raise LwqError(f"start plan gives unit {u} {bits} bits; allowed: {problem.levels(u)}")
    used = problem.bytes(start)
    if used > problem.budget:
        raise LwqError(
            f"start plan needs {used} B, {used - problem.budget} B above the budget "
            f"{problem.budget} B; lower some units or raise the budget"
        )
    return start


def _fingerprint(problem: Problem, settings: SearchSettings, start: Plan) -> str:
    """What a checkpoint must match to be resumed; generations may grow, progress may change."""
    same = {k: v for k, v in asdict(settings).items() if k not in ("generations", "progress")}
    text = json.dumps(
        {
            "cost": [list(r.items()) for r in problem.cost],
            "budget": problem.budget,
            "settings": same,
            "start": start,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save(path: Path, state: _State, fingerprint: str) -> None:
    """Write the state as JSON to a temp file beside `path`, then os.replace: never torn."""
    last = len(state.calls) - 1
    text = json.dumps(
        {
            "fingerprint": fingerprint,
            "generation": state.generation,
            "parent": list(state.parent),
            "best": {"plan": list(state.parent), "fitness": state.cache[(last, state.parent)]},
            "cache": [[s, list(p), v] for (s, p), v in sorted(state.cache.items())],
            "calls": state.calls,
            "history": [asdict(g) for g in state.history],
            "rng": state.rng.getstate(),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load(path: Path, fingerprint: str, settings: SearchSettings) -> _State:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LwqError(
            f"search checkpoint {path} is unreadable ({e}); delete it to start over"
        ) from None
    if data.get("fingerprint") != fingerprint:
        raise LwqError(
            f"search checkpoint {path} is from another problem, start or settings; "
            "delete it or give another checkpoint path"
        )
    if data["generation"] > settings.generations:
        raise LwqError(
            f"search checkpoint {path} has {data['generation']} generations, more "
            f"than generations={settings.generations}; raise generations or delete it"
        )
    version, internal, gauss = data["rng"]
    rng = random.Random()
    rng.setstate((version, tuple(internal), gauss))
    history = [Generation(**{**g, "evaluations": tuple(g["evaluations"])}) for g in data["history"]]
    cache = {(s, tuple(p)): v for s, p, v in data["cache"]}
    return _State(data["generation"], tuple(data["parent"]), rng, cache, data["calls"], history)
