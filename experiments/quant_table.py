"""Perplexity of one model's sweep points by quantizer settings, as a Markdown table: one
row per (backend, settings, calibration size, bit pair, ordering), one column per k.

Usage: python experiments/quant_table.py [model] [--results results] [--eval-limit 8]
(reads <results>/<model>/records.jsonl; what experiments/gptq_vs_rtn.sh writes).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

SKIP = {"name", "eval_dequantized", "calib"}  # how it is evaluated; calib: shown apart


def perplexity(record: dict) -> float | None:
    for metrics in record["eval"]["tasks"].values():
        if "token_perplexity" in metrics:
            return metrics["token_perplexity"]
    return None


def row_label(record: dict) -> str:
    quant = record["quant"]
    settings = ", ".join(f"{k}={v}" for k, v in sorted(quant.items()) if k not in SKIP)
    calib = record["config"]["calib"]
    calibrated = quant["name"] == "gptq"
    where = f" · calib {calib['samples']}x{calib['seq_len']}" if calibrated else ""
    order = record["metric"] + (" reversed" if record.get("reverse") else "")
    return f"{quant['name']} {settings}{where} · {record['high']}->{record['low']} · {order}"


def table(records: list[dict], eval_limit: int | None) -> str:
    chosen = [
        r for r in records if eval_limit is None or r["config"]["eval"]["limit"] == eval_limit
    ]
    reference = [perplexity(r) for r in chosen if r["kind"] == "reference"]
    rows: dict[str, dict[int, float]] = defaultdict(dict)
    for r in chosen:
        if r["kind"] == "quantized" and r.get("baseline", "none") == "none":
            rows[row_label(r)][r["k"]] = perplexity(r)
    ks = sorted({k for row in rows.values() for k in row})
    lines = [
        f"unquantized: {reference[-1]:.2f}" if reference else "unquantized: not recorded",
        "",
        "| quantizer · bits · order | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for name, row in rows.items():
        cells = [f"{row[k]:.1f}" if k in row else "" for k in ks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--eval-limit", type=int, default=8, help="pieces per point (null: any)")
    args = parser.parse_args()
    path = args.results / args.model / "records.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(table(records, args.eval_limit))


if __name__ == "__main__":
    main()
