"""The table printed at the end of a sweep: one row per point, read from the records."""

from __future__ import annotations

_SKIP = ("_stderr", "bits_per_byte")


def metric_columns(record: dict) -> dict[str, float]:
    """Headline numbers of one record: each task's metrics, then the cross-check's."""
    columns = {}
    for task, metrics in record["eval"]["tasks"].items():
        short = task.removeprefix("lwq_")
        for name, value in metrics.items():
            if not name.endswith(_SKIP):
                columns[f"{short}:{name}"] = value
    for name, value in (record["eval"].get("average") or {}).items():
        columns[f"average:{name}"] = value
    check = record["eval"].get("cross_check")
    if check:
        columns["token_ppl"] = check["token_perplexity"]
    return columns


def _label(record: dict) -> str:
    """unquantized, k=5 (quantized), pruned k=5, allocated, manual."""
    kind = record["kind"]
    if kind == "reference":
        return "unquantized"
    if kind in ("quantized", "pruned"):
        return f"{'pruned ' if kind == 'pruned' else ''}k={record['k']}"
    return kind


def format_table(records: list[dict]) -> str:
    """Fixed-width text table sorted with the reference first, then by fraction."""
    rows = [r for r in records if r.get("status", "ok") == "ok"]  # failed points: not measured
    rows = sorted(rows, key=lambda r: (r["kind"] != "reference", r.get("k") or 0))
    if not rows:
        return "(no records)"
    metric_names = list(metric_columns(rows[0]))
    header = ["point", "fraction", "avg_bits", "bits/w", "MB", *metric_names]
    lines = [header]
    for r in rows:
        quantized = r["kind"] != "reference"
        lines.append(
            [
                _label(r),
                "-" if r.get("fraction") is None else f"{r['fraction']:.3f}",
                f"{r['avg_bits']:.3f}",
                f"{r['bits_per_weight']:.3f}" if quantized else "-",
                f"{r['weight_bytes'] / 1e6:.2f}" if quantized else "-",
                *(f"{metric_columns(r).get(m, float('nan')):.4g}" for m in metric_names),
            ]
        )
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in lines
    )
