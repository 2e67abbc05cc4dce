"""Every point a sweep evaluates, planned as plain data before any is evaluated.

A point is what the evaluation loop needs and nothing more: its kind, its key, the plan
to install, the blocks to remove (pruning), its k, and the record fields only its kind
has. Planning needs the importance scores (cached, or computed on the loaded model) and
the size table, never a quantized model.

Kinds: `reference` (the model as loaded), `quantized` (the k least important blocks of
an ordering at `sweep.low`), `pruned` (the same k removed, the rest at `sweep.high`),
`allocated` (the exact allocator's plan under a budget) and `manual` (a plan file).

`plan_points` is the one planner: the sweep, the dry run and export call it with their
own score source (lwq.commands.score_source); an ordering whose scores the source does
not have is planned with blocks in index order and marked `ranked=False`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lwq.allocate import allocate
from lwq.commands.budget import achieved, allocation_budget
from lwq.commands.identity import Identity
from lwq.commands.score_source import ScoreSource
from lwq.config import MetricSpec, RunConfig
from lwq.errors import LwqError
from lwq.metrics import Scores, ranking
from lwq.plan import Plan, sweep_points, two_level_plan
from lwq.quant.base import FULL_PRECISION
from lwq.quant.cost import SizeTable
from lwq.results import keys
from lwq.search import Problem


@dataclass(frozen=True)
class Point:
    kind: str
    key: str
    plan: Plan
    k: int | None = None
    removed: tuple[int, ...] = ()
    label: str = ""  # for progress lines
    fields: dict = field(default_factory=dict)  # record fields only this kind has
    ranked: bool = True  # False: the ordering's scores were not available (dry run)

    def plan_key(self, identity) -> str:
        """The key of what is evaluated (lwq.results.keys.plan_key), shared across orderings."""
        return keys.plan_key(
            model=identity.model,
            evaluation=identity.evaluation,
            quant=identity.quant,
            plan=self.plan.as_list(),
            removed=list(self.removed),
        )


def plan_points(
    run: RunConfig,
    identity: Identity,
    sizes: SizeTable,
    scores: ScoreSource,
    ks: list[int] | None = None,
    searched=None,
) -> list[Point]:
    """Every point of `run` in evaluation order (plain data; nothing is installed): the
    reference, each ordering's k (the sweep's, or only `ks`), the allocated plan and the
    plan file. With `ks` given (export) the reference is left out. `searched(problem,
    start, settings, key)` finds the plan of `allocate.method=search` (needs the model:
    the sweep's context gives it; without it that point is left out and said so)."""
    n = len(sizes)
    points = [reference_point(identity, n)] if run.sweep.reference and ks is None else []
    for metric in run.metric.variants() if ks != [] else ():
        measured, key = scores(metric.name, metric.settings)
        points += ordering_points(run, identity, n, metric, measured, key, ks)
    if run.budget.wanted:
        measured, key = scores("sensitivity", allocation_settings(run))
        if measured is None:
            print("allocated plan: needs the measured sensitivity (computed by the sweep)")
        elif run.budget.method == "search" and searched is None:
            print("searched plan: found by the sweep (it scores plans on the model)")
        else:
            points.append(allocated_point(run, identity, sizes, measured, key, searched))
    if run.manual_plan is not None:
        points.append(manual_point(identity, run.manual_plan))
    return points


def reference_point(identity: Identity, n_blocks: int) -> Point:
    """The unquantized model, once per (model, eval), shared by every sweep."""
    key = keys.reference_key(identity.model, identity.evaluation)
    return Point("reference", key, Plan((FULL_PRECISION,) * n_blocks), label="unquantized")


def ordering_points(
    run: RunConfig,
    identity: Identity,
    n_blocks: int,
    metric: MetricSpec,
    scores: Scores | None,
    score_key: dict,
    ks: list[int] | None = None,
) -> list[Point]:
    """Every k of the sweep (or `ks`) for one ordering (one metric variant), from its
    scores; without scores, blocks in index order (`ranked=False`)."""
    ranked = scores is not None
    scores = scores or Scores((0.0,) * n_blocks)  # ties: blocks in index order
    order = ranking(scores, reverse=metric.reverse)
    prune = run.baseline == "prune"
    high, low = run.sweep.high, run.sweep.low
    i = identity
    sweep = keys.sweep_id(
        model=i.model,
        evaluation=i.evaluation,
        scores=score_key,
        reverse=metric.reverse,
        quant=i.quant,
        high=high,
        low=None if prune else low,
        baseline=run.baseline,
    )
    ordering = {
        "metric": metric.name,
        "metric_canonical": score_key["metric"],
        "metric_settings": score_key["settings"],
        "reverse": metric.reverse,
        "baseline": run.baseline,
        "scores": list(scores.values),
        "higher_is_important": scores.higher_is_important,
        "ranking": order,
        "sweep_id": sweep,
        **({} if scores.seconds is None else {"score_seconds": scores.seconds}),
    }
    n = n_blocks
    ks = sweep_points(n, run.sweep.fractions, run.sweep.blocks) if ks is None else list(ks)
    if prune and n in ks:
        print(f"k={n}: a model without blocks cannot run; pruning stops at L-1")
        ks.remove(n)
    name = _ordering_label(metric, run.baseline)
    points = []
    for k in ks:
        key = keys.point_key(sweep, k)
        if prune:  # the survivors stay at high bits
            removed = tuple(sorted(order[:k]))
            plan = Plan((high,) * n)
            fields = ordering | {"removed_blocks": list(removed)}
            points.append(Point("pruned", key, plan, k, removed, f"{name} k={k}", fields, ranked))
        else:
            plan = two_level_plan(order, k, high=high, low=low)
            fields = ordering | {"low_blocks": sorted(order[:k])}
            points.append(Point("quantized", key, plan, k, (), f"{name} k={k}", fields, ranked))
    return points


def allocation_settings(run: RunConfig) -> dict:
    """The sensitivity measurement the allocator needs: KL at every allowed width."""
    allowed = list(run.budget.allowed_bits)
    settings = {
        "bits": allowed[0],
        "table_bits": allowed,
        "batch_size": run.metric.settings.get("batch_size", 8),
    }
    if run.budget.unit != "block":  # left out for blocks: keys made before units stay valid
        settings["unit"] = run.budget.unit
    if run.budget.ties:
        settings["ties"] = [list(t) for t in run.budget.ties]
    return settings


def allocated_point(
    run: RunConfig,
    identity: Identity,
    sizes: SizeTable,
    scores: Scores,
    score_key: dict,
    searched=None,
) -> Point:
    """The plan minimising summed measured sensitivity under `budget` or `budget_bytes`,
    or (`allocate.method=search`) the search's plan started from it."""
    allowed = list(run.budget.allowed_bits)
    budget = allocation_budget(run, sizes)
    table, target, units = budget.sizes, budget.target, budget.units
    if len(scores.details[f"kl@{allowed[0]}"]) != len(units):
        raise LwqError(
            f"the sensitivity table has {len(scores.details[f'kl@{allowed[0]}'])} rows for "
            f"{len(units)} {run.budget.unit} units; its cache key should have told them apart"
        )
    costs = [{b: scores.details[f"kl@{b}"][u] for b in allowed} for u in range(len(units))]
    chosen = allocate(costs, table, budget.limit)  # one width per unit
    i = identity
    method, extra, label = None, {}, "allocated"
    if run.budget.method == "search":
        settings = run.budget.search
        method = {"search": {k: v for k, v in asdict(settings).items() if k != "progress"}}
        problem = Problem(tuple(table), int(budget.limit))
        found = {"model": i.model, "quant": i.quant, "calib": i.calibration, **target}
        start = {"start": list(chosen.bits)}
        chosen, facts = searched(problem, chosen, settings, found | start, budget.plan)
        extra, label = {"allocate_method": "search", "search": facts}, "searched"
    plan = budget.plan(chosen.bits)
    if run.budget.unit != "block":
        extra |= {
            "unit_names": [u.name for u in units],
            "unit_plan": list(chosen.bits),
            "linear_names": [list(n) for n in sizes.linear_names],
        }
    key = keys.allocated_key(
        model=i.model,
        evaluation=i.evaluation,
        sensitivity=score_key,
        quant=i.quant,
        target=target,
        allowed_bits=allowed,
        method=method,
    )
    fields = target | {
        "allowed_bits": allowed,
        "predicted_sensitivity": sum(c[b] for c, b in zip(costs, chosen.bits, strict=True)),
        "sensitivity_table": {str(b): [c[b] for c in costs] for b in allowed},
        **({} if scores.seconds is None else {"sensitivity_seconds": scores.seconds}),
        **({"achieved": achieved(run, sizes, plan.bits)} if run.budget.format else {}),
        **extra,
    }
    return Point("allocated", key, plan, label=label, fields=fields)


def manual_point(identity: Identity, plan: Plan) -> Point:
    """A plan file applied exactly as written (its length was checked against the model)."""
    i = identity
    key = keys.manual_key(
        model=i.model, evaluation=i.evaluation, plan=plan.as_list(), quant=i.quant
    )
    return Point("manual", key, plan, label="manual")


def _ordering_label(metric: MetricSpec, baseline: str) -> str:
    seed = metric.settings.get("seed")
    parts = [
        metric.name,
        *([f"seed={seed}"] if seed is not None else []),
        *(["reversed"] if metric.reverse else []),
        *(["pruned"] if baseline == "prune" else []),
    ]
    return " ".join(parts)
