"""The functions that build result records (a point's, a comparison's), and what every
record of a run shares.

A record is flat JSON: the run's shared fields (model, backend, evaluation provenance,
versions, device, the resolved config), the point's own fields (kind, k, plan, sizes,
the ordering or allocation that made it), and what evaluating it gave (metrics, peak
memory, seconds). The reference point (the model as loaded) has no plan or sizes.
"""

from __future__ import annotations

import time

from lwq.plan import Plan
from lwq.quant.cost import Cost


def shared_fields(
    *,
    model: str,
    quant: dict,
    eval_provenance: dict,
    versions: dict,
    device: str,
    config: dict,
    seed: int,
    code: dict,
    data_sha256: dict,
    weights_sha256: dict,
    weights_source: dict | None = None,
) -> dict:
    """The fields every record of one run has in common, provenance included: the seed, the
    library versions, the git commit (and whether the tree was dirty), and a sha256 of each
    data and weight file the run read; `weights_source` says when the weights were a
    quantized format (GGUF) dequantized on load, and of which tensor types."""
    return {
        "model": model,
        "quant": quant,
        "eval_provenance": eval_provenance,
        "versions": versions,
        "device": device,
        "config": config,
        "seed": seed,
        "code": code,
        "data_sha256": data_sha256,
        "weights_sha256": weights_sha256,
        "weights_source": weights_source,
    }


def build_record(
    shared: dict,
    *,
    kind: str,
    key: str,
    result: dict,
    eval_memory: dict,
    eval_seconds: float,
    plan: Plan | None = None,
    cost: Cost | None = None,
    k: int | None = None,
    high: int | None = None,
    low: int | None = None,
    quantize: dict | None = None,
    fields: dict | None = None,
    plan_key: str | None = None,
    reused_from: str | None = None,
) -> dict:
    """One point's record.

    `plan`/`cost` are absent for the reference; `k` is the number of blocks an ordering
    moved low (or removed, `kind="pruned"`); `quantize` is {"seconds", "memory"} of
    installing the plan; `fields` are what only this kind has (the ordering's scores and
    ranking, the allocation's table, `removed_blocks`, `low_blocks`). `plan_key` names what
    was evaluated; `reused_from` the point whose result this one shares (same plan key).
    """
    point: dict = {"kind": kind, "k": k}
    if plan is None:
        point["avg_bits"] = 16.0
    else:
        n = len(plan.bits)
        point |= {
            "n_blocks": n,
            "fraction": None if k is None else k / n,
            "high": high,
            "low": low,
            "plan": plan.as_list(),
            "avg_bits": cost.avg_bits,
            "bits_per_weight": cost.bits_per_weight,
            "weight_bytes": cost.weight_bytes,
            "block_bytes": list(cost.block_bytes),
            "quantize_seconds": round(quantize["seconds"], 3),
            "quantize_memory": quantize["memory"],
        }
    extra = {"plan_key": plan_key} if plan_key else {}
    if reused_from:
        extra["reused_from"] = reused_from
    return {
        **shared,
        **(fields or {}),
        **point,
        **extra,
        "point_key": key,
        "eval": result,
        "eval_memory": eval_memory,
        "seconds": round(eval_seconds, 2),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def failed_record(
    shared: dict, *, kind: str, key: str, k: int | None, plan: Plan, reason: str
) -> dict:
    """A point that could not be evaluated: kept so the failure is visible, never "done"
    (lwq.results.store), so a rerun tries it again; tables and figures leave it out."""
    return {
        **shared,
        "kind": kind,
        "k": k,
        "plan": plan.as_list(),
        "point_key": key,
        "status": "failed",
        "error": reason,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def comparison_record(
    *,
    model: str,
    model_identity: dict,
    spearman: dict[str, float],
    scores: dict[str, list[float]],
    sensitivity_details: dict[str, list[float]],
    config: dict,
    versions: dict,
) -> dict:
    """`python run.py compare`'s record (comparisons.jsonl): each cheap metric's Spearman
    rho with the measured sensitivity, and every score it was computed from."""
    return {
        "kind": "comparison",
        "model": model,
        "model_identity": model_identity,
        "spearman_vs_sensitivity": spearman,
        "scores": scores,
        "sensitivity_details": sensitivity_details,
        "config": config,
        "versions": versions,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
