"""The run recipe: load once, score once, then evaluate every point of the sweep.

This is the one place that reads the composed Hydra config; everything it calls takes
plain typed arguments. A sweep evaluates, for one model and one backend:
the unquantized reference, then for each variant of the metric (several seeds for
`random`) every k of the fraction sweep, either quantizing the k least important blocks
low (`baseline=none`) or removing them (`baseline=prune`); plus, when asked, a plan
allocated to an exact budget and a plan read from a file.
"""

from __future__ import annotations

from omegaconf import DictConfig
from tqdm import tqdm

from lwq.compare import sensitivity_summary
from lwq.metrics import ranking
from lwq.paths import resolve_path
from lwq.plan import Plan, read_plan_file, sweep_points, two_level_plan
from lwq.planned import allocated_point, manual_point
from lwq.prune import blocks_removed
from lwq.recipe import digest, importance, metric_variants, model_identity
from lwq.session import Session, open_session, plan_point
from lwq.summary import format_table


def run_sweep(cfg: DictConfig) -> list[dict]:
    """`command=sweep`: every point, resuming from the records; returns the new records."""
    session = open_session(cfg)
    keys = []
    try:
        keys.append(_reference(session))
        for settings in metric_variants(cfg):
            keys += _ordering_sweep(session, settings)
        if cfg.budget is not None or cfg.budget_bytes is not None:
            keys.append(allocated_point(session))
        if cfg.plan_file:
            keys.append(manual_point(session, read_plan_file(resolve_path(cfg.plan_file))))
    finally:
        session.tracker.finish()
    records = [r for r in session.store.read() if r.get("point_key") in set(keys)]
    print(format_table(records))
    print(sensitivity_summary(cfg, records))
    return session.written


def _reference(s: Session) -> str:
    """The unquantized model, once per (model, eval), shared by every sweep."""
    key = "reference-" + digest({"model": model_identity(s.cfg), "eval": s.suite.identity()})
    if s.cfg.sweep.reference and key not in s.done:
        tqdm.write("evaluating the unquantized model (reference)")
        s.evaluate(key, {"kind": "reference", "avg_bits": 16.0, "k": None})
    return key


def _ordering_sweep(s: Session, settings: dict) -> list[str]:
    """Every k of the fraction sweep for one metric variant; returns the point keys."""
    cfg = s.cfg
    scores, score_key, _ = importance(cfg, s.model, s.tokenizer, s.blocks, settings)
    order = ranking(scores, reverse=cfg.metric.reverse)
    prune = cfg.baseline.name == "prune"
    sweep_id = digest(
        {
            "model": model_identity(cfg),
            "eval": s.suite.identity(),
            "metric": {**score_key, "reverse": cfg.metric.reverse},
            "quant": s.common["quant"],
            "high": cfg.sweep.high,
            "low": None if prune else cfg.sweep.low,
            "baseline": cfg.baseline.name,
        }
    )
    ordering = {
        "metric": cfg.metric.name,
        "metric_canonical": score_key["metric"],
        "metric_settings": settings,
        "reverse": cfg.metric.reverse,
        "baseline": cfg.baseline.name,
        "scores": list(scores.values),
        "higher_is_important": scores.higher_is_important,
        "ranking": order,
        "sweep_id": sweep_id,
    }
    ks = sweep_points(len(s.blocks), cfg.sweep.fractions, cfg.sweep.blocks)
    if prune and len(s.blocks) in ks:
        tqdm.write(f"k={len(s.blocks)}: a model without blocks cannot run; pruning stops at L-1")
        ks.remove(len(s.blocks))
    applier = s.applier()
    keys = [f"{sweep_id}-k{k}" for k in ks]
    todo = [(k, key) for k, key in zip(ks, keys, strict=True) if key not in s.done]
    if len(todo) < len(ks):
        tqdm.write(f"{len(ks) - len(todo)} of {len(ks)} points already in {s.store.path}")
    desc = f"{cfg.baseline.name} {cfg.model.name} {cfg.metric.name} {settings}"
    all_high = Plan((cfg.sweep.high,) * len(s.blocks))
    try:
        for k, key in tqdm(todo, desc=desc, unit="point"):
            plan = (
                all_high
                if prune
                else two_level_plan(order, k, high=cfg.sweep.high, low=cfg.sweep.low)
            )
            installed = s.install(applier, plan)  # pruning keeps the survivors at high bits
            if prune:
                removed = tuple(sorted(order[:k]))
                point = plan_point("pruned", s, plan, installed, k=k, removed=removed)
                with blocks_removed(s.model, s.blocks, list(removed)):
                    s.evaluate(key, ordering | point)
            else:
                point = plan_point("quantized", s, plan, installed, k=k)
                s.evaluate(key, ordering | point | {"low_blocks": sorted(order[:k])})
    finally:
        applier.restore()
    return keys
