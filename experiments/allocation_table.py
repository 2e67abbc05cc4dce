"""The allocation study's table (experiments/allocation.sh) from a model's records: per
backend and budget, each method's plan (DP, search) with its held-out perplexity and KL,
its calibration KL (predicted by the summed table, realized by the whole plan), its
seconds, and every two-level order at the same bytes (lwq.results.at_bytes).

Usage: python experiments/allocation_table.py [model] [records.jsonl]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lwq.results.at_bytes import comparable, compare_at_bytes  # noqa: E402
from lwq.results.store import RecordStore  # noqa: E402
from lwq.results.table import metric_columns, ranked_metric  # noqa: E402

ORDERS = ("ldi", "zd", "position", "sensitivity", "random")


def main(model: str = "ref-tiny", path: str | None = None) -> None:
    default = ROOT / "results" / "allocation" / model / "records.jsonl"
    records = RecordStore(Path(path) if path else default).read()
    plans = [r for r in records if r["kind"] == "allocated" and r.get("status", "ok") == "ok"]
    if not plans:
        raise SystemExit(f"no allocated plans in {path or default}; run experiments/allocation.sh")
    ppl = ranked_metric(list(metric_columns(plans[0])))
    header = ["backend", "budget", "method", "unit", "bits/w", "ppl", "KL", "cal. KL", "pred.", "s"]
    header += [f"{o} ppl" for o in ORDERS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for plan in sorted(plans, key=_order):
        same = [r for r in records if comparable(r) == comparable(plan)]
        (row,) = [m for m in compare_at_bytes([plan, *_two_level(same)], ppl)]
        baselines = {b.order: b for b in row.baselines}
        cells = [
            plan["quant"]["name"],
            str(plan.get("budget") or f"{plan.get('budget_bytes')} B"),
            plan.get("allocate_method", "dp"),
            plan.get("unit", "block"),
            f"{plan['bits_per_weight']:.3f}",
            f"{row.value:.3f}",
            _kl(plan),
            _calibration_kl(plan),
            f"{plan['predicted_sensitivity']:.4f}",
            f"{_seconds(plan):.0f}",
        ]
        for order in ORDERS:
            b = baselines.get(order)
            if b is None:
                cells.append("-")
                continue
            spread = "" if b.spread is None else f" ± {b.spread:.3f}"
            cells.append(f"{b.value:.3f}{spread}" + ("" if b.exact else " (under)"))
        print("| " + " | ".join(cells) + " |")


def _two_level(records: list[dict]) -> list[dict]:
    return [r for r in records if r["kind"] == "quantized" and r.get("status", "ok") == "ok"]


def _order(record: dict) -> tuple:
    return (
        record["quant"]["name"],
        -(record.get("budget") or 0),
        record.get("budget_bytes") or 0,
        record.get("unit", "block") != "block",
        record.get("allocate_method", "dp"),
    )


def _kl(record: dict) -> str:
    kl = record["eval"].get("kl")
    return "-" if not kl else f"{kl['mean']:.4f}"


def _calibration_kl(record: dict) -> str:
    realized = (record.get("damage") or {}).get("calibration_kl")
    if realized is None:
        realized = (record.get("search") or {}).get("calibration_kl")
    return "-" if realized is None else f"{realized:.4f}"


def _seconds(record: dict) -> float:
    """The table's measurement, the search, and the point's own quantization."""
    search = (record.get("search") or {}).get("seconds", 0.0)
    return (record.get("sensitivity_seconds") or 0.0) + search + record["quantize_seconds"]


if __name__ == "__main__":
    main(*sys.argv[1:])
