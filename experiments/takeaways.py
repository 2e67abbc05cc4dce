"""The paper's takeaways (a)-(d) measured from records, one column per model (Markdown).

(a) how many blocks can go to the low bit-width before perplexity rises 5 % (10 %) over
    the all-high point (k = 0) of the same sweep, per ordering (random: the seeds' mean);
(b) the same count with GPTQ and with RTN under the LIM order;
(c) quantizing the k least important blocks against removing them, at every k;
(d) the counts as shares of the model's blocks, so the 12-block and 30-block models compare.

Reads the records `make figures` reads (results/<model>/records.jsonl, else the committed
ones under experiments/records/), through lwq.figures' selection of curves.
Usage: python experiments/takeaways.py [--results DIR] [--metric token_perplexity] [MODEL ...]
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from lwq.figures.cli import COMMITTED
from lwq.figures.select import (
    Curve,
    ModelRecords,
    Perf,
    fill_from_committed,
    load_results,
    parse_perf,
    sweep_curves,
)

RISES = (0.05, 0.10)
ORDERINGS = (("ldi", False, "LIM"), ("zd", False, "ZD"), ("random", False, "random (mean)"))
ORDERINGS += (("position", False, "position"), ("sensitivity", False, "sensitivity"))
ORDERINGS += (("ldi", True, "reverse LIM"),)


@dataclass(frozen=True)
class Pair:
    """A two-level sweep: `high` -> `low` bits with one backend."""

    high: int
    low: int
    backend: str

    def __str__(self) -> str:
        return f"{self.high}→{self.low} {self.backend.upper()}"


def blocks_before_rise(curve: Curve, rise: float) -> float | None:
    """How many blocks go low before perplexity first exceeds (1 + rise) x its k = 0 value:
    the crossing between the last evaluated k within and the first beyond, interpolated
    linearly in log perplexity; the largest k when none is beyond; None without k = 0."""
    values = dict(zip(curve.ks, curve.mean, strict=True))
    if 0 not in values:
        return None
    limit = math.log(values[0] * (1 + rise))
    ks = sorted(values)
    for before, after in zip(ks, ks[1:], strict=False):
        low, high = math.log(values[before]), math.log(values[after])
        if high > limit:
            return before + (after - before) * (limit - low) / (high - low)
    return float(ks[-1])


def curves_of(mr: ModelRecords, perf: Perf, pair: Pair, kind: str = "quantized") -> list[Curve]:
    high_only = kind == "pruned"
    low = None if high_only else pair.low
    curves, _ = sweep_curves(mr.records, perf, kind=kind, high=pair.high, low=low)
    return [c for c in curves if c.quant.get("name") == pair.backend]


def find(curves: list[Curve], metric: str, reverse: bool) -> Curve | None:
    return next((c for c in curves if c.metric == metric and c.reverse == reverse), None)


def count_cell(curve: Curve | None, n_blocks: int) -> str:
    """ "k5 / k10 of n; perplexity at half the blocks" for one ordering; "—" if unmeasured."""
    if curve is None:
        return "—"
    counts = [blocks_before_rise(curve, rise) for rise in RISES]
    cell = " / ".join("—" if c is None else f"{c:.1f}" for c in counts) + f" of {n_blocks}"
    half = min(curve.ks, key=lambda k: abs(k - n_blocks / 2))
    return cell + f"; {curve.mean[curve.ks.index(half)]:.3g} at k={half}"


def versus_pruning(quantized: Curve | None, pruned: Curve | None) -> str:
    """At how many shared k > 0 quantizing beats removing, and the ratio at the middle k."""
    if quantized is None or pruned is None:
        return "—"
    q = dict(zip(quantized.ks, quantized.mean, strict=True))
    p = dict(zip(pruned.ks, pruned.mean, strict=True))
    shared = sorted(k for k in set(q) & set(p) if k > 0)
    if not shared:
        return "—"
    wins = sum(q[k] < p[k] for k in shared)
    mid = shared[len(shared) // 2]
    return f"quantizing better at {wins} of {len(shared)} k; k={mid}: {q[mid]:.3g} vs {p[mid]:.3g}"


def best_share(curves: list[Curve], n_blocks: int) -> str:
    """The share of the model's blocks the best ordering (by the +5 % count) moves low."""
    named = [(find(curves, m, r), label) for m, r, label in ORDERINGS if not r]
    measured = [(c, label) for c, label in named if c is not None and c.ks and c.ks[0] == 0]
    if not measured or not n_blocks:
        return "—"
    shares = {
        label: [blocks_before_rise(c, rise) / n_blocks for rise in RISES] for c, label in measured
    }
    label = max(shares, key=lambda name: shares[name])
    return " / ".join(f"{share:.0%}" for share in shares[label]) + f" ({label})"


def allocated_cell(mr: ModelRecords, perf: Perf, budget: float, pair: Pair) -> str:
    """The allocator's plan at `budget` average bits against the LIM two-level sweep at the
    nearest k with at most as many bits."""
    allocated = [r for r in mr.of_kind("allocated") if r.get("budget") == budget]
    allocated = [r for r in allocated if r.get("quant", {}).get("name") == pair.backend]
    allocated = [r for r in allocated if r.get("unit", "block") == "block"]  # the paper's
    two_level = find(curves_of(mr, perf, pair), "ldi", False)
    if not allocated or two_level is None:
        return "—"
    record, n = allocated[-1], two_level.n_blocks
    bits = {k: (pair.high * (n - k) + pair.low * k) / n for k in two_level.ks}
    k = min((k for k in two_level.ks if bits[k] <= budget), key=lambda k: -bits[k])
    lim = two_level.mean[two_level.ks.index(k)]
    mix = "+".join(f"{record['plan'].count(b)}×{b}" for b in sorted(set(record["plan"])))
    return f"{perf.value(record):.3g} ({mix}) vs LIM k={k}: {lim:.3g}"


def model_column(mr: ModelRecords, perf: Perf) -> dict[str, str]:
    """{row label: cell} for one model."""
    reference = [perf.value(r) for r in mr.of_kind("reference")]
    cells = {"unquantized perplexity": f"{reference[-1]:.4g}" if reference else "—"}
    n = 0
    for pair in (Pair(4, 2, "gptq"), Pair(8, 4, "rtn"), Pair(4, 3, "rtn")):
        curves = curves_of(mr, perf, pair)
        n = n or next((c.n_blocks for c in curves), 0)
        k0 = find(curves, "ldi", False)
        cells[f"{pair}: all blocks at {pair.high} bits (k = 0)"] = (
            f"{k0.mean[0]:.4g}" if k0 and k0.ks[0] == 0 else "—"
        )
        for metric, reverse, label in ORDERINGS:
            cells[f"(a) {pair}: {label}"] = count_cell(find(curves, metric, reverse), n)
    for backend in ("gptq", "rtn"):
        curve = find(curves_of(mr, perf, Pair(4, 2, backend)), "ldi", False)
        cells[f"(b) 4→2 LIM, {backend.upper()}"] = count_cell(curve, n)
    for pair in (Pair(4, 2, "gptq"), Pair(8, 4, "rtn")):
        quantized = find(curves_of(mr, perf, pair), "ldi", False)
        pruned = find(curves_of(mr, perf, pair, kind="pruned"), "ldi", False)
        cells[f"(c) {pair} vs removing, LIM"] = versus_pruning(quantized, pruned)
    for pair in (Pair(4, 2, "gptq"), Pair(8, 4, "rtn"), Pair(4, 3, "rtn")):
        cells[f"(d) {pair}: share of blocks low within +5 % / +10 %, best order"] = best_share(
            curves_of(mr, perf, pair), n
        )
    for budget in (3.25, 2.5):
        cells[f"allocator at {budget} bits (GPTQ)"] = allocated_cell(
            mr, perf, budget, Pair(4, 2, "gptq")
        )
    return cells


def text_perf(records: list[dict], metric: str | None) -> Perf:
    """The eval text's perplexity: `metric` of the default task (byte perplexity if None)."""
    default = parse_perf(None, records)
    return default if metric is None else Perf(default.source, metric)


def takeaways_table(results_dir: Path, models: list[str], metric: str | None) -> str:
    results = load_results(results_dir)
    fill_from_committed(results, COMMITTED)
    columns, perf_names = {}, set()
    for model in models:
        records = results.get(model)
        if not isinstance(records, list) or not records:
            raise SystemExit(f"{model}: no records under {results_dir} or {COMMITTED}")
        mr = ModelRecords.newest_setting(model, records, "ppl")
        perf = text_perf(mr.records, metric)
        perf_names.add(str(perf))
        columns[model] = model_column(mr, perf)
    rows = [r for r in next(iter(columns.values())) if any(c[r] != "—" for c in columns.values())]
    lines = [
        f"Perplexity: {', '.join(sorted(perf_names))}. (a), (b): blocks at the low bits before "
        "perplexity rises 5 % / 10 % over k = 0 (interpolated between the evaluated k), "
        "and the perplexity with half the blocks low.",
        "",
        "| takeaway | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    lines += [f"| {row} | " + " | ".join(columns[m][row] for m in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["ref-tiny", "smollm2-135m"])
    parser.add_argument("--results", default="results/smollm2-paper", type=Path)
    parser.add_argument("--metric", default="token_perplexity", help="of the eval text's task")
    args = parser.parse_args(argv)
    print(takeaways_table(args.results, args.models, args.metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
