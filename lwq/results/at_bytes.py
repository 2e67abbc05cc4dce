"""Every method's plan beside the two-level orders at the same bytes.

An allocator's, a search's or a hand-written plan holds some weight bytes B. A two-level
order (ldi, zd, position, sensitivity; random seeds) offers one point per k, each with its
own bytes. Its comparison with the plan is its point with the most bytes not above B:
what that order gets for no more memory than the plan, marked `exact` when the bytes are
equal and otherwise giving the bytes it used (two-level points move in whole blocks, so
most budgets fall between two of them). Random orders give the mean and the spread
(population standard deviation) of each seed's point. Only records of the same backend
settings and the same evaluated tasks are compared (`comparable`).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

from lwq.results.table import metric_columns

METHOD_KINDS = ("allocated", "manual")


@dataclass(frozen=True)
class AtBytes:
    """One order's number at (or under) a plan's bytes."""

    order: str  # ldi, zd, random, ... (reversed orders say so)
    value: float  # the metric; the mean over seeds for a random order
    spread: float | None  # standard deviation over seeds (random orders), else None
    weight_bytes: int  # the point's bytes (the largest over seeds for a random order)
    exact: bool  # every seed's point has exactly the plan's bytes
    seeds: int


@dataclass(frozen=True)
class MethodRow:
    label: str  # allocated, searched, manual
    weight_bytes: int
    value: float
    baselines: tuple[AtBytes, ...]


def comparable(record: dict) -> str:
    """What must match for two records to be compared: backend settings, tasks."""
    return json.dumps([record.get("quant"), sorted(record["eval"]["tasks"])], sort_keys=True)


def order_name(record: dict) -> str:
    return record.get("metric", "?") + (" reversed" if record.get("reverse") else "")


def method_label(record: dict) -> str:
    """`allocated`, `searched` or `manual`, with a unit finer than blocks after a slash."""
    label = record["kind"]
    if record["kind"] == "allocated" and record.get("allocate_method") == "search":
        label = "searched"
    unit = record.get("unit", "block")
    return label if unit == "block" else f"{label}/{unit}"


def compare_at_bytes(records: list[dict], metric: str) -> list[MethodRow]:
    """For each method plan among `records`, every two-level order's `metric` at its bytes;
    orders with no point under a plan's bytes are left out of that row."""
    ok = [r for r in records if r.get("status", "ok") == "ok"]
    rows = []
    for plan in (r for r in ok if r["kind"] in METHOD_KINDS and metric in metric_columns(r)):
        same = [
            r
            for r in ok
            if r["kind"] == "quantized"
            and comparable(r) == comparable(plan)
            and metric in metric_columns(r)
        ]
        baselines = []
        for order in sorted({order_name(r) for r in same}):
            found = _under(
                [r for r in same if order_name(r) == order], plan["weight_bytes"], metric
            )
            if found is not None:
                baselines.append(AtBytes(order, *found))
        value = metric_columns(plan)[metric]
        rows.append(MethodRow(method_label(plan), plan["weight_bytes"], value, tuple(baselines)))
    return rows


def _under(points: list[dict], budget: int, metric: str):
    """(value, spread, bytes, exact, seeds) of an order's best-fitting point per seed."""
    by_seed: dict = {}
    for r in points:
        by_seed.setdefault((r.get("metric_settings") or {}).get("seed"), []).append(r)
    chosen = []
    for seeded in by_seed.values():
        fitting = [r for r in seeded if r["weight_bytes"] <= budget]
        if not fitting:
            return None  # a seed with no point under the budget: no fair mean
        chosen.append(max(fitting, key=lambda r: (r["weight_bytes"], -r["k"])))
    values = [metric_columns(r)[metric] for r in chosen]
    spread = statistics.pstdev(values) if len(values) > 1 else None
    exact = all(r["weight_bytes"] == budget for r in chosen)
    used = max(r["weight_bytes"] for r in chosen)
    return statistics.fmean(values), spread, used, exact, len(chosen)


def format_at_bytes(rows: list[MethodRow], metric: str) -> str:
    """A text table: per method plan, its metric and each order's at the same bytes."""
    if not rows:
        return f"(no allocated or hand-written plan with {metric} to compare)"
    lines = [f"{metric} at each plan's bytes (order's nearest point not above them):"]
    for row in rows:
        lines.append(f"  {row.label:<10} {row.weight_bytes:>12} B  {row.value:.4f}")
        for b in row.baselines:
            spread = "" if b.spread is None else f" +- {b.spread:.4f} ({b.seeds} seeds)"
            where = "same bytes" if b.exact else f"{b.weight_bytes} B, under"
            lines.append(f"    {b.order:<20} {b.value:.4f}{spread}  [{where}]")
    return "\n".join(lines)
