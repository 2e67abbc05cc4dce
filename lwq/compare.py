"""The `scores` and `compare` commands: importance scores side by side, and how well the
cheap ones (ldi/LIM, zd, position) rank blocks like the measured sensitivity."""

from __future__ import annotations

import time

from omegaconf import DictConfig, OmegaConf
from scipy.stats import spearmanr

from lwq.metrics import Scores, ranking
from lwq.paths import PROJECT_ROOT, resolve_path
from lwq.recipe import importance, load, model_identity, plain, versions
from lwq.records import RecordStore
from lwq.scores import cache_key, load_cached


def importance_values(scores: Scores) -> list[float]:
    """Values oriented so that larger always means more important."""
    sign = 1.0 if scores.higher_is_important else -1.0
    return [sign * v for v in scores.values]


def rank_correlation(a: Scores, b: Scores) -> float:
    """Spearman's rho between two importance scores (ties get average ranks)."""
    return float(spearmanr(importance_values(a), importance_values(b)).statistic)


def metric_settings(cfg: DictConfig, name: str) -> dict:
    """A metric's default settings from conf/metric/<name>.yaml, resolved against `cfg`
    (so `${sweep.low}` in sensitivity.yaml means this run's low bit-width)."""
    root = OmegaConf.to_container(cfg, resolve=False)
    root["metric"] = OmegaConf.to_container(
        OmegaConf.load(PROJECT_ROOT / "conf/metric" / f"{name}.yaml")
    )
    return plain(OmegaConf.create(root).metric.settings)


def sensitivity_summary(cfg: DictConfig, records: list[dict]) -> str:
    """Spearman of each ordering in `records` with the measured sensitivity, if it is cached
    (it is computed by `python run.py compare` or `metric=sensitivity`, never here)."""
    key = cache_key(
        model_identity(cfg), "sensitivity", metric_settings(cfg, "sensitivity"), plain(cfg.calib)
    )
    reference = load_cached(resolve_path(cfg.paths.cache), key)
    if reference is None:
        return "Spearman vs measured sensitivity: not cached yet (run `python run.py compare`)"
    orderings = {}
    for r in records:
        if "scores" in r:
            name = f"{r['metric']}{' reversed' if r.get('reverse') else ''} {r['metric_settings']}"
            orderings[name] = Scores(tuple(r["scores"]), r["higher_is_important"])
    lines = [f"  {name}: {rank_correlation(s, reference):+.3f}" for name, s in orderings.items()]
    return "\n".join(["Spearman vs measured sensitivity (as scored):", *lines])


def run_scores(cfg: DictConfig) -> dict:
    """`command=scores`: each block's score under the configured metric, and the order."""
    model, tokenizer, blocks, _ = load(cfg)
    scores, _, was_cached = importance(cfg, model, tokenizer, blocks, plain(cfg.metric.settings))
    order = ranking(scores, reverse=cfg.metric.reverse)
    origin = "cached" if was_cached else "computed"
    print(f"{cfg.metric.name} scores of {cfg.model.name} ({origin}):")
    for i, value in enumerate(scores.values):
        print(f"  block {i:3d}  {value:.6f}  rank {order.index(i)}")
    print("least -> most important:", order)
    return {"scores": list(scores.values), "ranking": order}


def run_compare(cfg: DictConfig) -> dict:
    """`command=compare`: Spearman rho of each cheap metric with the measured sensitivity."""
    model, tokenizer, blocks, _ = load(cfg)
    reference, _, _ = importance(
        cfg, model, tokenizer, blocks, metric_settings(cfg, "sensitivity"), "sensitivity"
    )
    all_scores = {"sensitivity": list(reference.values)}
    rho = {}
    for name in cfg.compare_metrics:
        scores, _, _ = importance(cfg, model, tokenizer, blocks, metric_settings(cfg, name), name)
        all_scores[name] = list(scores.values)
        rho[name] = rank_correlation(scores, reference)
    print(
        f"Spearman rank correlation with measured sensitivity ({cfg.model.name}, "
        f"{cfg.quant.name} at {cfg.sweep.low} bits, {len(blocks)} blocks):"
    )
    for name, value in rho.items():
        print(f"  {name:10s} {value:+.3f}")
    record = {
        "kind": "comparison",
        "model": cfg.model.name,
        "model_identity": model_identity(cfg),
        "spearman_vs_sensitivity": rho,
        "scores": all_scores,
        "sensitivity_details": {k: list(v) for k, v in reference.details.items()},
        "config": plain(cfg),
        "versions": versions(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    RecordStore(resolve_path(cfg.paths.results) / cfg.model.name / "comparisons.jsonl").append(
        record
    )
    return record
