"""How many block-forwards prefix reuse saves (`python -m bench --section reuse`).

From the model's own ldi ranking (cached, or computed once), the plans of a 6-point, the
paper's 11-point and an every-k sweep (plus the reference), in the order the sweep
evaluates them: blocks run per input against blocks a full forward per plan runs
(lwq.modeling.prefix.block_forwards, the arithmetic the sweep announces and a test checks
against counted forwards). The sensitivity table's count is its own (each one-block plan
runs from its block on, lwq.metrics.sensitivity). Then the 11-point sweep is run twice in
one sitting, reuse on and off, cold caches but the scores: seconds, the counted
block-forwards and whether every record's numbers are equal.
"""

from __future__ import annotations

import tempfile
import time

from lwq.commands.context import open_context
from lwq.commands.points import plan_points
from lwq.commands.reuse import SweepReuse
from lwq.commands.sweep import run_sweep
from lwq.config import compose_run
from lwq.modeling.prefix import PrefixCache
from lwq.results.store import RecordStore

SHAPES = {
    "6-point": "sweep.fractions=[0,0.2,0.4,0.6,0.8,1]",
    "11-point": "sweep.fractions=[0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1]",
}


def planned_savings(overrides: list[str], cache: str) -> dict:
    """Blocks run of each sweep shape with reuse, from the plans alone."""
    out = {}
    base = [f"paths.cache={cache}", "tracking=none", *overrides]
    run = compose_run(*base, SHAPES["6-point"])
    ctx = open_context(run, evaluate=False)
    depth = len(ctx.blocks)
    shapes = {**SHAPES, "every-k": f"sweep.blocks=[{','.join(map(str, range(depth + 1)))}]"}
    for name, shape in shapes.items():
        extra = ["sweep.fractions=null", shape] if name == "every-k" else [shape]
        shaped = compose_run(*base, *extra)
        points = plan_points(shaped, ctx.identity, ctx.sizes, ctx.score_source())
        reuse = SweepReuse(PrefixCache(1.0), ctx.engine, ctx.blocks)
        run_blocks, full = reuse.savings(reuse.order(points))
        out[name] = {"points": len(points), "blocks_run": run_blocks, "blocks_full": full}
        out[name]["saved"] = round(1 - run_blocks / full, 3)
    widths = len(run.sensitivity.settings.get("table_bits") or [2, 3, 4, 8])
    one_block = widths * depth * (depth + 1) // 2 + 2 * depth  # + reference and capture
    out["sensitivity"] = {
        "blocks_run": one_block,
        "blocks_full": widths * depth * depth + depth,
        "saved": round(1 - one_block / (widths * depth * depth + depth), 3),
    }
    return out


def measured_sweep(overrides: list[str], cache: str) -> dict:
    """The 11-point sweep with reuse on and off: seconds, block-forwards, equal numbers."""
    out, evals = {}, {}
    for memory in (0.5, 0):
        with tempfile.TemporaryDirectory() as scratch:
            run = compose_run(
                f"paths.results={scratch}",
                f"paths.cache={cache}",  # the scores computed above, nothing else
                "tracking=none",
                f"eval.reuse_memory={memory}",
                SHAPES["11-point"],
                *overrides,
            )
            started = time.time()
            run_sweep(run)
            seconds = time.time() - started
            records = RecordStore(run.paths.results / run.model.name / "records.jsonl").read()
        evals[memory] = {r["point_key"]: r["eval"] for r in records}
        out["reuse on" if memory else "reuse off"] = {
            "seconds": round(seconds, 1),
            "eval_seconds": round(sum(r["seconds"] for r in records), 1),
        }
    out["identical_numbers"] = evals[0.5] == evals[0]
    return out


def bench_reuse(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        planned = planned_savings(overrides, cache)
        measured = measured_sweep(overrides, cache)
    return {
        "what": "block-forwards of the held-out passes with prefix reuse against a full "
        "forward per plan (ldi order), and an 11-point sweep timed with reuse on and off",
        "command": "python -m bench --section reuse " + " ".join(overrides),
        "model": compose_run(*overrides).model.name,
        "planned": planned,
        "measured_11_point": measured,
    }
