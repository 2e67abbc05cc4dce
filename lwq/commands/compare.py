"""`python run.py compare`: how well the cheap importance scores (ldi/LIM, zd, position)
rank blocks like the measured sensitivity, as Spearman's rho; and the same correlation
for the orderings of a finished sweep, when the sensitivity is cached."""

from __future__ import annotations

from scipy.stats import spearmanr

from lwq.commands.context import open_context
from lwq.commands.identity import Identity
from lwq.commands.score_source import cached_only
from lwq.config import RunConfig
from lwq.metrics import Scores
from lwq.provenance import library_versions
from lwq.results.record import comparison_record
from lwq.results.store import RecordStore
from lwq.runtime import seed_everything


def importance_values(scores: Scores) -> list[float]:
    """Values oriented so that larger always means more important."""
    sign = 1.0 if scores.higher_is_important else -1.0
    return [sign * v for v in scores.values]


def rank_correlation(a: Scores, b: Scores) -> float:
    """Spearman's rho between two importance scores (ties get average ranks)."""
    return float(spearmanr(importance_values(a), importance_values(b)).statistic)


def sensitivity_summary(run: RunConfig, identity: Identity, records: list[dict]) -> str:
    """Spearman of each ordering in `records` with the measured sensitivity, if it is cached
    (it is computed by `python run.py compare` or `metric=sensitivity`, never here)."""
    reference, _ = cached_only(run.paths.cache, identity)("sensitivity", run.sensitivity.settings)
    if reference is None:
        return "Spearman vs measured sensitivity: not cached yet (run `python run.py compare`)"
    orderings = {}
    for r in records:
        if "scores" in r:
            name = f"{r['metric']}{' reversed' if r.get('reverse') else ''} {r['metric_settings']}"
            orderings[name] = Scores(tuple(r["scores"]), r["higher_is_important"])
    lines = [f"  {name}: {rank_correlation(s, reference):+.3f}" for name, s in orderings.items()]
    return "\n".join(["Spearman vs measured sensitivity (as scored):", *lines])


def run_compare(run: RunConfig) -> dict:
    """Spearman rho of each cheap metric with the measured sensitivity; one record."""
    seed_everything(run.seed)
    ctx = open_context(run, evaluate=False)
    reference, _, _ = ctx.scores("sensitivity", run.sensitivity.settings)
    all_scores = {"sensitivity": list(reference.values)}
    rho = {}
    for metric in run.compare_metrics:
        scores, _, _ = ctx.scores(metric.name, metric.settings)
        all_scores[metric.name] = list(scores.values)
        rho[metric.name] = rank_correlation(scores, reference)
    print(
        f"Spearman rank correlation with measured sensitivity ({run.model.name}, "
        f"{run.quant.name} at {run.sweep.low} bits, {len(ctx.blocks)} blocks):"
    )
    for name, value in rho.items():
        print(f"  {name:10s} {value:+.3f}")
    record = comparison_record(
        model=run.model.name,
        model_identity=ctx.identity.model,
        spearman=rho,
        scores=all_scores,
        sensitivity_details={k: list(v) for k, v in reference.details.items()},
        config=run.plain,
        versions=library_versions(run.quant.name),
    )
    RecordStore(run.paths.results / run.model.name / "comparisons.jsonl").append(record)
    return record
