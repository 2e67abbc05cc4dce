"""The SliderQuant study's tables (experiments/slider.sh) from a model's records: every
block at one width, per channel and at group 128, rtn / gptq / slider / slider block by
block (and slider's ablations), each with held-out perplexity, KL to the unquantized
model, calibration seconds and peak memory; then the 4 -> 2 sweep points, if any.

Usage: python experiments/slider_table.py [model] [records.jsonl]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lwq.results.store import RecordStore  # noqa: E402
from lwq.results.table import metric_columns, ranked_metric  # noqa: E402

MIB = 2**20


def label(record: dict, preset: dict) -> str:
    """The method as the table names it: the backend, slider's schedule, and whatever
    differs from the model's preset (epochs, calibration sequences)."""
    quant = record["quant"]
    name = quant["name"]
    if name == "gptq":
        name = f"gptq (damp {quant['damp_percent']}, mse {quant.get('mse', 0)})"
    if quant["name"] == "slider":
        name = "slider block by block" if quant["window"] == 1 else "slider"
        if quant["epochs"] != preset["epochs"]:
            name += f", {quant['epochs']} epochs"
    calib = record["config"]["calib"]
    if calib["samples"] != preset["samples"]:
        name += f", {calib['samples']} x {calib['seq_len']} calibration"
    return name


def _preset(records: list[dict]) -> dict:
    """The study's own settings: the most common slider epochs and calibration size."""
    sliders = [r for r in records if r["quant"]["name"] == "slider"]

    def common(values):
        return max(set(values), key=values.count) if values else None

    return {
        "epochs": common([r["quant"]["epochs"] for r in sliders]),
        "samples": common([r["config"]["calib"]["samples"] for r in records]),
    }


def _row(record: dict, ppl: str, preset: dict) -> list[str]:
    kl = record["eval"].get("kl") or {}
    memory = (record.get("quantize_memory") or {}).get("peak_bytes")
    seconds = record.get("quantize_seconds")
    return [
        label(record, preset),
        f"{record['bits_per_weight']:.3f}",
        f"{metric_columns(record)[ppl]:.4g}",
        f"{kl['mean']:.3f}" if "mean" in kl else "",
        f"{seconds:.0f}" if seconds is not None else "",
        f"{memory / MIB:,.0f}" if memory else "",
    ]


def main(model: str = "ref-tiny", path: str | None = None) -> None:
    default = ROOT / "results" / "slider" / model / "records.jsonl"
    records = RecordStore(Path(path) if path else default).read()
    records = [r for r in records if r.get("status", "ok") == "ok"]
    points = [r for r in records if r["kind"] == "quantized"]
    if not points:
        raise SystemExit(f"no quantized points in {path or default}; run experiments/slider.sh")
    ppl = ranked_metric(list(metric_columns(points[0])))
    preset = _preset(points)
    reference = next((r for r in records if r["kind"] == "reference"), None)
    if reference:
        print(f"unquantized: {ppl} {metric_columns(reference)[ppl]:.4g}\n")
    header = ["group", "bits", "method", "bits/w", "ppl", "KL", "calib. s", "peak MiB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    uniform = [r for r in points if len(set(r["plan"])) == 1 and r["high"] == 3]
    for record in sorted(uniform, key=lambda r: _order(r, preset)):
        group = record["quant"].get("group_size") or "channel"
        cells = [str(group), str(record["plan"][0]), *_row(record, ppl, preset)]
        print("| " + " | ".join(cells) + " |")
    swept = [r for r in points if r["high"] == 4]
    if swept:
        print(f"\n4 -> 2 by ldi (group {swept[0]['quant'].get('group_size')})\n")
        header = ["k", "method", "bits/w", "ppl", "KL", "calib. s", "peak MiB"]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for record in sorted(swept, key=lambda r: (r["k"], r["quant"]["name"])):
            print("| " + " | ".join([str(record["k"]), *_row(record, ppl, preset)]) + " |")


def _order(record: dict, preset: dict) -> tuple:
    """Per channel before group 128, 3 bits before 2, then rtn, gptq, slider, block by
    block, each before its ablations."""
    quant = record["quant"]
    method = ("rtn", "gptq", "slider").index(quant["name"])
    method += quant["name"] == "slider" and quant["window"] == 1
    name = label(record, preset)
    return (quant.get("group_size") or 0, -record["plan"][0], method, "," in name, name)


if __name__ == "__main__":
    main(*sys.argv[1:])
