"""`python run.py scores`: each block's importance under the configured metric, and the
order it gives (least important first), without evaluating anything."""

from __future__ import annotations

from lwq.commands.context import open_context
from lwq.config import RunConfig
from lwq.metrics import ranking
from lwq.runtime import seed_everything


def run_scores(run: RunConfig) -> dict:
    seed_everything(run.seed)
    ctx = open_context(run, evaluate=False)
    scores, _, was_cached = ctx.scores(run.metric.name, run.metric.settings)
    order = ranking(scores, reverse=run.metric.reverse)
    origin = "cached" if was_cached else "computed"
    print(f"{run.metric.name} scores of {run.model.name} ({origin}):")
    for i, value in enumerate(scores.values):
        print(f"  block {i:3d}  {value:.6g}  rank {order.index(i)}")
    print("least -> most important:", order)
    return {"scores": list(scores.values), "ranking": order}
