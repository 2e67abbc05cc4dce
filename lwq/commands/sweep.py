"""`python run.py sweep`: the unquantized reference, every point of every ordering (several
seeds for `random`), the allocated and the hand-written plan, each evaluated once.

The recipe: open the context (checks the input, loads the model), plan every point as
plain data (lwq.commands.points), then one loop installs each plan, evaluates it, appends
its record and, at the end, restores the model. Points already in the records are skipped.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

from tqdm import tqdm

from lwq.commands.compare import sensitivity_summary
from lwq.commands.context import RunContext, open_context
from lwq.commands.points import (
    Point,
    allocated_point,
    manual_point,
    ordering_points,
    reference_point,
)
from lwq.config import RunConfig
from lwq.modeling.prune import blocks_removed
from lwq.results.record import build_record
from lwq.results.table import format_table
from lwq.results.tracking import tracked_values
from lwq.runtime import peak_memory


def run_sweep(run: RunConfig) -> list[dict]:
    """Every point of the sweep, resuming from the records; returns the new records."""
    ctx = open_context(run, evaluate=True)
    try:
        points = plan_points(run, ctx)
        written = evaluate_points(ctx, points, high=run.sweep.high, low=run.sweep.low)
    finally:
        ctx.close()
    wanted = {p.key for p in points}
    records = [r for r in ctx.store.read() if r.get("point_key") in wanted]
    print(format_table(records))
    print(sensitivity_summary(run, records))
    return written


def plan_points(run: RunConfig, ctx: RunContext) -> list[Point]:
    """The sweep's points in evaluation order (plain data; nothing is installed)."""
    points = [reference_point(ctx)] if run.sweep.reference else []
    for metric in run.metric.variants():
        points += ordering_points(run, ctx, metric)
    if run.budget.wanted:
        points.append(allocated_point(run, ctx))
    if run.manual_plan is not None:
        points.append(manual_point(ctx, run.manual_plan))
    return points


def evaluate_points(ctx: RunContext, points: list[Point], *, high: int, low: int) -> list[dict]:
    """Install, evaluate and record every point not yet in the records; restore the model."""
    done = ctx.store.done_keys()
    todo = [p for p in points if p.key not in done]
    if len(todo) < len(points):
        tqdm.write(f"{len(points) - len(todo)} of {len(points)} points already in {ctx.store.path}")
    applier = ctx.applier()
    written: list[dict] = []
    try:
        bar = tqdm(todo, desc=f"sweep {ctx.shared['model']}", unit="point")
        for point in bar:
            bar.set_postfix_str(point.label)
            quantize = _install(ctx, applier, point)
            started = time.time()
            with peak_memory(ctx.device) as eval_memory, _removed(ctx, point):
                result = ctx.suite.evaluate(ctx.model, ctx.tokenizer)
            record = build_record(
                ctx.shared,
                kind=point.kind,
                key=point.key,
                result=result,
                eval_memory=eval_memory,
                eval_seconds=time.time() - started,
                **_plan_fields(ctx, point, quantize, high=high, low=low),
            )
            ctx.store.append(record)
            ctx.tracker.log(len(written), tracked_values(record))
            written.append(record)
    finally:
        applier.restore()
    return written


def _install(ctx: RunContext, applier, point: Point) -> dict:
    """Apply the point's plan; the quantize part of its record: seconds and peak memory."""
    started = time.time()
    with peak_memory(ctx.device) as memory:
        applier.apply(point.plan)
    return {"seconds": time.time() - started, "memory": memory}


def _removed(ctx: RunContext, point: Point):
    """The pruning baseline's blocks out of the model while the point is evaluated."""
    if not point.removed:
        return nullcontext()
    return blocks_removed(ctx.model, ctx.blocks, list(point.removed))


def _plan_fields(ctx: RunContext, point: Point, quantize: dict, *, high: int, low: int) -> dict:
    """What build_record needs of the point besides its result (nothing plan-like for the
    reference: it is the model as loaded)."""
    if point.kind == "reference":
        return {}
    return {
        "plan": point.plan,
        "cost": ctx.sizes.cost(point.plan, point.removed),
        "k": point.k,
        "high": high,
        "low": None if point.kind == "pruned" else low,
        "quantize": quantize,
        "fields": point.fields,
    }
