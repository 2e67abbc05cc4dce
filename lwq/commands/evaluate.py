"""The one loop that changes the model: for each planned point, claim it, install its
plan, evaluate, append its record, release the claim; restore the model at the end.

Several processes may work on the same records at once (Hydra multirun, SLURM arrays,
two terminals): a point is evaluated only by the process that claims it
(lwq.claims), others skip it and, once their own points are done, wait for it to
be recorded or for its claim to go stale, and then take it over.

A point that fails at run time (CUDA out of memory, a NaN metric, a numerical error in a
library) is recorded as failed with the reason and the loop goes on; it is not "done",
so a rerun retries it. Bad input (LwqError) and stop signals end the loop.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext

import torch
from tqdm import tqdm

from lwq.claims import Claims
from lwq.commands.context import RunContext
from lwq.commands.damage import damage_meter
from lwq.commands.points import Point
from lwq.commands.reuse import SweepReuse
from lwq.commands.stopping import StopSignals
from lwq.modeling.prefix import PrefixCache
from lwq.modeling.prune import blocks_removed
from lwq.results.record import build_record, failed_record
from lwq.results.tracking import tracked_values
from lwq.runtime import freed_after, peak_memory
from lwq.units import Unit, make_units

WAIT_SECONDS = 5.0  # between looks at points other processes are evaluating
# Run-time failures of one point; anything else (bad input, a bug in lwq) stops the run.
POINT_FAILURES = (RuntimeError, FloatingPointError, ArithmeticError)


class NonFiniteMetric(FloatingPointError):
    """The evaluation gave NaN: a broken point, not a measurement."""


def evaluate_points(
    ctx: RunContext,
    points: list[Point],
    stop: StopSignals,
    *,
    high: int,
    low: int,
    sensitivity_key: dict | None = None,
    units: list[Unit] | None = None,
) -> tuple[list[dict], list[dict]]:
    """(records written, failures recorded) for every point not yet in the records; with
    the run's sensitivity table cached under `sensitivity_key`, each plan's record also gets
    its predicted and realized calibration KL (lwq.commands.damage); `units` are the rows of
    that table (default: the blocks)."""
    done = ctx.store.done_keys()
    todo = [p for p in points if p.key not in done]
    if len(todo) < len(points):
        tqdm.write(f"{len(points) - len(todo)} of {len(points)} points already in {ctx.store.path}")
    reuse, todo = _reuse(ctx, todo)
    written: list[dict] = []
    failed: list[dict] = []
    if todo and ctx.kl_cache is not None:  # before any plan is installed: the model as loaded
        ctx.suite.prepare_reference(ctx.model, ctx.tokenizer, ctx.kl_cache)
    units = units or make_units(ctx.sizes.linear_names, "block")
    damage = damage_meter(ctx, sensitivity_key, units) if todo and sensitivity_key else None
    applier = ctx.applier()
    bar = tqdm(total=len(todo), desc=f"sweep {ctx.shared['model']}", unit="point")
    try:
        with Claims(ctx.store.path.parent / "claims") as claims:
            while todo:
                elsewhere = []
                for n, point in enumerate(todo):
                    bar.set_postfix_str(point.label)
                    held: list[str] = []
                    try:
                        # the point, and its plan (which another ordering's point may
                        # share); taken and given back whole, a stop signal waits meanwhile
                        with stop.critical():
                            held = _claim(claims, [point.key, point.plan_key(ctx.identity)])
                        if not held:
                            elsewhere.append(point)  # another process is evaluating it
                            continue
                        if point.key not in ctx.store.done_keys():  # recorded meanwhile?
                            around = reuse.context(point, todo[n + 1 :])
                            record = _evaluate(
                                ctx,
                                applier,
                                point,
                                stop,
                                high=high,
                                low=low,
                                reuse=around,
                                damage=damage,
                            )
                            _keep(ctx, record, written, failed)
                    finally:
                        with stop.critical():
                            for key in held:
                                claims.release(key)
                    bar.update()
                todo = _still_open(ctx, elsewhere, claims)
    finally:
        bar.close()
        applier.restore()
    if reuse.cache is not None and reuse.cache.blocks_run:
        run, skipped = reuse.cache.blocks_run, reuse.cache.blocks_skipped
        tqdm.write(
            f"prefix reuse: ran {run} of {run + skipped} block-forwards of the held-out passes "
            f"({skipped / (run + skipped):.0%} skipped, numbers unchanged)"
        )
    return written, failed


def _reuse(ctx: RunContext, todo: list[Point]) -> tuple[SweepReuse, list[Point]]:
    """The prefix reuse of this sweep (eval.reuse_memory), announced with what it saves,
    and the points in the order it evaluates them."""
    if not ctx.reuse_memory or not ctx.suite or not ctx.suite.texts:
        return SweepReuse(None, ctx.engine, ctx.blocks), todo
    reuse = SweepReuse(PrefixCache(ctx.reuse_memory, ctx.reuse_on), ctx.engine, ctx.blocks)
    ordered = reuse.order(todo)
    run, full = reuse.savings(ordered)
    if full and run < full:
        tqdm.write(
            f"evaluating {len(ordered)} points in the order that shares most blocks: the "
            f"held-out passes run {run} of {full} block-forwards per input "
            f"({1 - run / full:.0%} fewer, within eval.reuse_memory={ctx.reuse_memory:g} GB)"
        )
    return reuse, ordered


def _claim(claims: Claims, keys: list[str]) -> list[str]:
    """All of `keys` claimed (then returned), or none (those taken are given back)."""
    held = []
    for key in keys:
        if not claims.claim(key):
            for taken in held:
                claims.release(taken)
            return []
        held.append(key)
    return held


def _keep(ctx: RunContext, record: dict, written: list[dict], failed: list[dict]) -> None:
    if record.get("status") == "failed":
        failed.append(record)
        return
    ctx.tracker.log(len(written), tracked_values(record))
    written.append(record)


def _still_open(ctx: RunContext, elsewhere: list[Point], claims: Claims) -> list[Point]:
    """Points other processes hold that are not recorded yet, after a wait."""
    done = ctx.store.done_keys()
    open_points = [p for p in elsewhere if p.key not in done]
    if open_points:
        holders = sorted(
            {f"{h.get('host')}:{h.get('pid')}" for p in open_points if (h := claims.holder(p.key))}
        )
        tqdm.write(
            f"{len(open_points)} points are being evaluated by {', '.join(holders) or 'others'};"
            " waiting for them (a claim is taken over if its process dies)"
        )
        time.sleep(WAIT_SECONDS)
    return open_points


def _evaluate(
    ctx: RunContext,
    applier,
    point: Point,
    stop: StopSignals,
    *,
    high,
    low,
    reuse=None,
    damage=None,
) -> dict:
    """Install, evaluate and record one point (or its failure); returns the record. A point
    whose plan was evaluated already (by another ordering) gets that result again."""
    plan_key = point.plan_key(ctx.identity)
    earlier = _evaluated(ctx, plan_key)
    if earlier is not None:
        if "damage" in earlier:  # the same plan: the same damage
            point = dataclasses.replace(point, fields=point.fields | {"damage": earlier["damage"]})
        record = build_record(
            ctx.shared,
            kind=point.kind,
            key=point.key,
            result=earlier["eval"],
            eval_memory=earlier["eval_memory"],
            eval_seconds=0.0,
            plan_key=plan_key,
            reused_from=earlier["point_key"],
            **_plan_fields(ctx, point, {"seconds": 0.0, "memory": {}}, high=high, low=low),
        )
        with stop.critical():
            ctx.store.append(record)
        return record
    try:
        quantize = _install(applier, point, ctx.device)
        started = time.time()
        with peak_memory(ctx.device) as eval_memory, _removed(ctx, point), freed_after():
            result = ctx.suite.evaluate(
                ctx.model, ctx.tokenizer, reference_point=point.kind == "reference", reuse=reuse
            )
        _check_finite(result)
        if damage is not None and point.kind != "reference" and not point.removed:
            measured = damage.measure(point.plan)
            if measured is not None:
                point = dataclasses.replace(point, fields=point.fields | {"damage": measured})
        record = build_record(
            ctx.shared,
            kind=point.kind,
            key=point.key,
            result=result,
            eval_memory=eval_memory,
            eval_seconds=time.time() - started,
            plan_key=plan_key,
            **_plan_fields(ctx, point, quantize, high=high, low=low),
        )
    except POINT_FAILURES as err:
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
        tqdm.write(f"{point.label}: failed ({reason}); recorded as failed, a rerun retries it")
        record = failed_record(
            ctx.shared, kind=point.kind, key=point.key, k=point.k, plan=point.plan, reason=reason
        )
    with stop.critical():  # a record is written whole or not at all
        ctx.store.append(record)
    return record


def _evaluated(ctx: RunContext, plan_key: str) -> dict | None:
    """The first whole, successful record of a point with this plan key, if any."""
    for record in ctx.store.scan().records:
        ok = record.get("status", "ok") == "ok" and "reused_from" not in record
        if ok and record.get("plan_key") == plan_key:
            return record
    return None


def _check_finite(result: dict) -> None:
    for task, metrics in result["tasks"].items():
        for name, value in metrics.items():
            if isinstance(value, float) and math.isnan(value):
                raise NonFiniteMetric(f"{task} {name} is NaN")


def _install(applier, point: Point, device: torch.device) -> dict:
    """Apply the point's plan; the quantize part of its record: seconds and peak memory."""
    started = time.time()
    with peak_memory(device) as memory:
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
