"""`python run.py sweep`: the unquantized reference, every point of every ordering (several
seeds for `random`), the allocated and the hand-written plan, each evaluated once.

The recipe: open the context (checks the input, loads the model), plan every point as
plain data (lwq.commands.points), then one loop (lwq.commands.evaluate) claims, installs,
evaluates and records each point and, at the end, restores the model. Points already in
the records, or being evaluated by another process, are not evaluated again.
"""

from __future__ import annotations

from lwq.commands.budget import budget_units
from lwq.commands.compare import sensitivity_summary
from lwq.commands.context import open_context
from lwq.commands.evaluate import evaluate_points
from lwq.commands.points import Point, allocation_settings, plan_points
from lwq.commands.stopping import Stopped, StopSignals
from lwq.config import RunConfig
from lwq.errors import PointsFailed
from lwq.results.at_bytes import METHOD_KINDS, compare_at_bytes, format_at_bytes
from lwq.results.table import format_table, metric_columns, ranked_metric
from lwq.runtime import seed_everything


def run_sweep(run: RunConfig) -> list[dict]:
    """Every point of the sweep, resuming from the records; returns the new records.

    Raises Stopped on SIGTERM/SIGINT (what was recorded is kept) and PointsFailed after
    the table when points failed (they are recorded as failed; a rerun retries them).
    """
    seed_everything(run.seed)
    with StopSignals() as stop:
        ctx = open_context(run, evaluate=True)  # a stop in here has written nothing
        points: list[Point] = []
        try:
            points = plan_points(
                run, ctx.identity, ctx.sizes, ctx.score_source(), searched=ctx.search_source()
            )
            for point in points:  # a shape the backend refuses stops here, before any work
                ctx.sizes.cost(point.plan, point.removed)
            written, failed = evaluate_points(
                ctx,
                points,
                stop,
                high=run.sweep.high,
                low=run.sweep.low,
                sensitivity_key=ctx.identity.score_key("sensitivity", allocation_settings(run)),
                units=budget_units(run, ctx.sizes),
            )
        except Stopped as stopped:
            if points:
                recorded = len(ctx.store.done_keys() & {p.key for p in points})
                stopped.kept = f"{recorded} of {len(points)} points are in {ctx.store.path}"
            raise
        finally:
            ctx.close()
    planned = {p.key: n for n, p in enumerate(points)}  # the table in the planned order
    records = sorted(
        (r for r in ctx.store.read() if r.get("point_key") in planned),
        key=lambda r: planned[r["point_key"]],
    )
    print(format_table(records))
    print(sensitivity_summary(run, ctx.identity, records))
    methods = [r for r in records if r["kind"] in METHOD_KINDS and r.get("status", "ok") == "ok"]
    if methods:  # beside every two-level order of the model recorded so far, at equal bytes
        metric = ranked_metric(list(metric_columns(methods[0])))
        if metric is not None:
            print(format_at_bytes(compare_at_bytes(ctx.store.read(), metric), metric))
    if failed:
        raise PointsFailed(
            f"{len(failed)} of {len(points)} points failed (recorded with the reason in "
            f"{ctx.store.path}); run the same command again to retry them"
        )
    return written
