"""`damage_<model>`: how far the allocator's additivity holds on a model.

Every plan evaluated while the run's sensitivity table was cached has `damage` in its
record (lwq.commands.damage): the predicted KL (its blocks' single-block KLs summed) and
the KL of the whole plan on the same calibration tokens; the record's held-out KL
(`eval.kl.mean`) is the same plan on text nothing was tuned on. Two panels, predicted
against each realized KL on log axes with the line realized = predicted, titled with the
Spearman rank correlation and the median ratio realized / predicted (above 1: blocks
hurt more together than alone).
"""

from __future__ import annotations

import statistics

from scipy.stats import spearmanr

from lwq.figures.select import MissingRecords, ModelRecords
from lwq.figures.style import Drawn, new_figure, styled

MIN_PLANS = 3  # a rank correlation of fewer says nothing


def damage_points(records: list[dict]) -> list[dict]:
    """{"predicted", "calibration", "heldout", "kind"} of every record with damage and a
    positive predicted KL (a plan with no quantized block predicts nothing)."""
    points = []
    for r in records:
        damage = r.get("damage") or {}
        kl = (r.get("eval") or {}).get("kl") or {}
        if damage.get("predicted_kl", 0) > 0 and "calibration_kl" in damage:
            points.append(
                {
                    "predicted": damage["predicted_kl"],
                    "calibration": damage["calibration_kl"],
                    "heldout": kl.get("mean"),
                    "kind": r["kind"],
                }
            )
    return points


def agreement(predicted: list[float], realized: list[float]) -> dict:
    """Spearman's rho and the median ratio realized / predicted."""
    return {
        "spearman": float(spearmanr(predicted, realized).statistic),
        "median_ratio": statistics.median(r / p for p, r in zip(predicted, realized, strict=True)),
    }


@styled
def damage_figure(mr: ModelRecords) -> Drawn:
    points = damage_points(mr.records)
    if len(points) < MIN_PLANS:
        raise MissingRecords(
            f"{len(points)} plans with predicted damage (need {MIN_PLANS}); cache the "
            f"sensitivity table with `python run.py model={mr.model} budget=3.25`, then every "
            "sweep of the model records it"
        )
    fig = new_figure((9.0, 4.2))[0]
    fig.clear()
    notes = []
    panels = (("calibration", "calibration tokens"), ("heldout", "held-out text"))
    for n, (field, where) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, 2, n)
        shown = [p for p in points if p[field] is not None and p[field] > 0]
        if len(shown) < MIN_PLANS:
            ax.set_axis_off()
            notes.append(f"{where}: {len(shown)} plans with a KL")
            continue
        x = [p["predicted"] for p in shown]
        y = [p[field] for p in shown]
        fit = agreement(x, y)
        for kind in sorted({p["kind"] for p in shown}):
            mine = [p for p in shown if p["kind"] == kind]
            ax.scatter([p["predicted"] for p in mine], [p[field] for p in mine], s=14, label=kind)
        low, high = min(x + y), max(x + y)
        ax.plot([low, high], [low, high], color="grey", linewidth=1, label="realized = predicted")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("predicted KL (sum of single-block KLs)")
        ax.set_ylabel(f"realized KL on the {where}")
        ax.set_title(f"rho = {fit['spearman']:.3f}, median ratio {fit['median_ratio']:.2f}")
        ax.legend(fontsize=7)
    fig.suptitle(f"{mr.model}: predicted vs realized damage of {len(points)} plans")
    return Drawn(fig, notes)
