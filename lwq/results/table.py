"""The table printed at the end of a sweep: one row per point, read from the records.

Each row names the ordering that made it (metric, seed, reversed, pruned) beside its k,
and a `*` marks the best row among the points with the same average bits (by the first
of: token perplexity, KL, byte perplexity, average accuracy), so five random seeds and
the LIM order at k = 5 read as a comparison, not as five rows labelled `k=5`.
"""

from __future__ import annotations

import math

_SKIP = ("_stderr", "bits_per_byte")
_RANKED_BY = ("token_perplexity", "kl:mean", "byte_perplexity", "average:acc")


def metric_columns(record: dict) -> dict[str, float]:
    """Headline numbers of one record: each task's metrics, the averages, the KL."""
    columns = {}
    for task, metrics in record["eval"]["tasks"].items():
        short = task.removeprefix("lwq_")
        for name, value in metrics.items():
            if not name.endswith(_SKIP):
                columns[f"{short}:{name}"] = value
    for name, value in (record["eval"].get("average") or {}).items():
        columns[f"average:{name}"] = value
    kl = record["eval"].get("kl")
    if kl:
        columns["kl:mean"] = kl["mean"]
        columns["kl:top1_agreement"] = kl["top1_agreement"]
    return columns


def label(record: dict) -> str:
    """unquantized | ldi k=5 | random seed=1 k=5 | ldi reversed pruned k=5 | allocated | manual."""
    kind = record["kind"]
    if kind == "reference":
        return "unquantized"
    if kind not in ("quantized", "pruned"):
        return kind
    parts = [record.get("metric", "?")]
    seed = (record.get("metric_settings") or {}).get("seed")
    if seed is not None:
        parts.append(f"seed={seed}")
    if record.get("reverse"):
        parts.append("reversed")
    if kind == "pruned":
        parts.append("pruned")
    return " ".join([*parts, f"k={record['k']}"])


def format_table(records: list[dict]) -> str:
    """Fixed-width text table: the reference first, then by falling average bits."""
    rows = [r for r in records if r.get("status", "ok") == "ok"]  # failed points: not measured
    rows.sort(key=lambda r: (r["kind"] != "reference", -r["avg_bits"], label(r)))
    if not rows:
        return "(no records)"
    metric_names = list(dict.fromkeys(m for r in rows for m in metric_columns(r)))
    best = _best_per_average_bits(rows, metric_names)
    header = ["point", "fraction", "avg_bits", "bits/w", "MB", *metric_names, "best"]
    lines = [header]
    for i, r in enumerate(rows):
        quantized = r["kind"] != "reference"
        lines.append(
            [
                label(r),
                "-" if r.get("fraction") is None else f"{r['fraction']:.3f}",
                f"{r['avg_bits']:.3f}",
                f"{r['bits_per_weight']:.3f}" if quantized else "-",
                f"{r['weight_bytes'] / 1e6:.2f}" if quantized else "-",
                *(f"{metric_columns(r).get(m, float('nan')):.4g}" for m in metric_names),
                "*" if i in best else "",
            ]
        )
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )


def ranked_metric(metric_names: list[str]) -> str | None:
    """The column rows are ranked by: token perplexity, else KL, byte perplexity, accuracy."""
    return next(
        (m for key in _RANKED_BY for m in metric_names if m == key or m.endswith(f":{key}")),
        None,
    )


def _best_per_average_bits(rows: list[dict], metric_names: list[str]) -> set[int]:
    """Indices of the best quantized rows (ties: all) at each average-bits value whose
    rows differ; identical plans of several orderings (k = 0, k = L) get no star."""
    ranked = ranked_metric(metric_names)
    if ranked is None:
        return set()
    sign = -1.0 if ranked.startswith("average:") else 1.0  # accuracy: higher is better
    groups: dict[float, list[int]] = {}
    for i, r in enumerate(rows):
        value = metric_columns(r).get(ranked)
        if r["kind"] in ("quantized", "allocated", "manual") and _finite(value):
            groups.setdefault(round(r["avg_bits"], 9), []).append(i)
    best = set()
    for members in groups.values():
        values = {i: sign * metric_columns(rows[i])[ranked] for i in members}
        if len(members) > 1 and len(set(values.values())) > 1:  # ties everywhere: no best
            top = min(values.values())
            best |= {i for i, v in values.items() if v == top}
    return best


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
