"""Every key in one place: the score cache's, the sweep's and each point's.

A key hashes everything the numbers depend on and nothing else, so a point already in
the records is found again by any later run that would compute the same numbers
(`lim` and `ldi` share their points), and a changed setting gets new points.
Speed-only settings of the evaluation (batch size) are not in the keys; the metric's
`batch_size` is, as it always was: a key that changed would orphan existing records.
"""

from __future__ import annotations

from lwq.metrics import METRICS
from lwq.runtime import digest


def score_key(
    model: dict, metric: str, settings: dict, calibration: dict, quant: dict | None
) -> dict:
    """What a metric's scores depend on. Aliases (lim/ldi) share the canonical name; a
    metric that quantizes (sensitivity) depends on the backend, named as configured."""
    entry = METRICS.get(metric)
    settings = dict(settings)
    if entry.needs_quantizer:
        settings["quant"] = quant
    return {
        "model": model,
        "metric": entry.canonical,
        "settings": settings,
        "calibration": calibration if entry.needs_calibration else None,
    }


def quant_identity(name: str, settings: dict, calibration: dict | None) -> dict:
    """The backend as built (`settings()`, defaults filled in) and, for a calibrated
    backend, the calibration set it was calibrated on."""
    identity = {"name": name, **settings}
    if calibration is not None:
        identity["calib"] = calibration
    return identity


def reference_key(model: dict, evaluation: dict) -> str:
    """The unquantized model: one point per (model, eval), shared by every sweep."""
    return "reference-" + digest({"model": model, "eval": evaluation})


def sweep_id(
    *,
    model: dict,
    evaluation: dict,
    scores: dict,
    reverse: bool,
    quant: dict,
    high: int,
    low: int | None,
    baseline: str,
) -> str:
    """One ordering's sweep: its points are `point_key(sweep_id, k)`."""
    return digest(
        {
            "model": model,
            "eval": evaluation,
            "metric": {**scores, "reverse": reverse},
            "quant": quant,
            "high": high,
            "low": low,
            "baseline": baseline,
        }
    )


def point_key(sweep: str, k: int) -> str:
    return f"{sweep}-k{k}"


def allocated_key(
    *,
    model: dict,
    evaluation: dict,
    sensitivity: dict,
    quant: dict,
    target: dict,
    allowed_bits: list[int],
    method: dict | None = None,
) -> str:
    """A plan allocated to `target` ({"budget": bits} or {"budget_bytes": n}); `method`
    (a search's settings) only when not the exact DP, so DP keys stay as they were."""
    fields = {
        "model": model,
        "eval": evaluation,
        "sensitivity": sensitivity,
        "quant": quant,
        **target,
        "allowed_bits": allowed_bits,
    }
    return "allocated-" + digest(fields if method is None else fields | {"method": method})


def manual_key(*, model: dict, evaluation: dict, plan: list[int], quant: dict) -> str:
    """A hand-written plan, applied exactly."""
    return "manual-" + digest({"model": model, "eval": evaluation, "plan": plan, "quant": quant})


def plan_key(*, model: dict, evaluation: dict, quant: dict, plan: list[int], removed: list[int]) -> str:
    """What a point's numbers depend on, whichever ordering made its plan: points of
    several orderings (k = 0 and k = L of every ordering and seed, shared prefixes) with
    one plan key are evaluated once; the others reuse that result."""
    return "plan-" + digest(
        {"model": model, "eval": evaluation, "quant": quant, "plan": plan, "removed": removed}
    )
