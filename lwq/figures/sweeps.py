"""Performance figures: quality vs blocks moved to the low bit-width (`24bits_<model>`,
`4bit_plot_<model>`), quantizing vs removing the same blocks (`removal_<high>bits_<model>`)
and quality vs true model size (`size_<model>`).

Each builder takes one model's records and a `Perf`, returns a `Drawn` (figure + notes
on what is missing) or raises `MissingRecords` naming the records it needs and the run
that writes them. Builders only read records.
"""

from __future__ import annotations

import json
import math
import statistics

from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, MaxNLocator

from lwq.figures.select import (
    Curve,
    MissingRecords,
    ModelRecords,
    Perf,
    reference_value,
    sweep_curves,
)
from lwq.figures.style import (
    ALL_HIGH_STYLE,
    BAND_ALPHA,
    PRUNED_COLOUR,
    REFERENCE_STYLE,
    Drawn,
    backend_colour,
    line_style,
    metric_label,
    new_figure,
    styled,
)

# The orderings a bits figure should show (the paper's LIM, ZD, random, plus reverse LIM).
EXPECTED_ORDERINGS = (("ldi", False), ("zd", False), ("random", False), ("ldi", True))
PAIR_LINESTYLES = ("-", "--", "-.", ":")


def run_hint(model: str, metric: str, high: int, low: int | None, *extra: str) -> str:
    """The command that writes the missing records, quoted for a stdout line."""
    words = ["python run.py", f"model={model}", f"metric={metric}", f"sweep.high={high}"]
    words += [f"sweep.low={low}"] if low is not None else []
    words += extra
    return "`" + " ".join(words) + "`"


def legend_beside_if_crowded(ax: Axes, most_inside: int = 8) -> None:
    """The legend inside the axes, or to their right when it would hide the curves."""
    entries = len(ax.get_legend_handles_labels()[0])
    if entries <= most_inside:
        ax.legend(fontsize=7)
    else:
        width, height = ax.figure.get_size_inches()
        ax.figure.set_size_inches(width * 1.6, height)  # the axes keep their width
        ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


OTHER_BACKEND = {"linestyle": ":", "marker": "x", "markersize": 4}  # besides the main one


def quant_labels(quants: list[dict]) -> dict[str, str]:
    """{canonical JSON of a quant: short legend label}: the backend's name (`GPTQ`), plus
    only the settings that differ between curves of the same backend (`GPTQ damp_percent=0.1`)."""
    labels = {}
    for quant in quants:
        same = [q for q in quants if q.get("name") == quant.get("name")]
        keys = sorted({k for q in same for k in q if k != "name"})
        differ = [k for k in keys if len({json.dumps(q.get(k), sort_keys=True) for q in same}) > 1]
        shown = " ".join(f"{k}={quant.get(k)}" for k in differ)
        name = str(quant.get("name", "?")).upper()
        labels[json.dumps(quant, sort_keys=True)] = f"{name} {shown}".strip()
    return labels


def draw_curve(ax: Axes, curve: Curve, label: str | None = None, **overrides) -> None:
    """The mean line of `curve`, plus a min-max band (labelled) when it has several seeds."""
    style = line_style(curve.metric, curve.reverse) | overrides
    label = label or metric_label(curve.metric, curve.reverse)
    if curve.band is not None:
        lo, hi = curve.band
        band_label = f"{label}: min-max of {len(curve.seeds)} seeds"
        ax.fill_between(
            curve.ks, lo, hi, color=style["color"], alpha=BAND_ALPHA, lw=0, label=band_label
        )
        label = f"{label} (mean of {len(curve.seeds)} seeds)"
    ax.plot(curve.ks, curve.mean, label=label, **style)


def draw_references(ax: Axes, mr: ModelRecords, perf: Perf, curves, high: int) -> list[str]:
    """Horizontal lines for the unquantized model and the all-high model (k = 0)."""
    notes = []
    reference = reference_value(mr, perf)
    if reference is None:
        notes.append("missing the unquantized reference (kind=reference; sweep.reference=true)")
    elif not perf.is_kl:  # the KL of the unquantized model to itself is 0 by definition
        ax.axhline(reference, label="unquantized (16-bit)", **REFERENCE_STYLE)
    at_zero = [c.mean[c.ks.index(0)] for c in curves if 0 in c.ks]
    if at_zero:
        ax.axhline(
            statistics.fmean(at_zero), label=f"all blocks {high}-bit (k=0)", **ALL_HIGH_STYLE
        )
    else:
        notes.append("missing the k=0 point (all blocks high; sweep.fractions with 0)")
    return notes


def k_axis(ax: Axes, n_blocks: int, label: str) -> None:
    """x = number of blocks k, each tick also giving k as a percentage of all blocks."""
    ax.set_xlabel(f"{label}, k of {n_blocks} blocks (% of blocks)")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda k, _: f"{k:.0f}\n{100 * k / n_blocks:.0f}%"))


class _PlainLogFormatter(LogFormatterSciNotation):
    """Log-axis labels as plain numbers (9.95, 20, 300): the parent decides which ticks
    get a label, this only changes how the label is written."""

    def __call__(self, x, pos=None):
        if not super().__call__(x, pos):
            return ""
        lo, hi = sorted(self.axis.get_view_interval())
        digits = 3 + max(0, math.ceil(math.log10(hi / max(hi - lo, 1e-12 * hi))))
        return f"{x:.{digits}g}"  # enough digits that neighbouring labels differ


def perf_axis(ax: Axes, perf: Perf) -> None:
    """The performance label, and a log scale with plain labels for perplexities."""
    ax.set_ylabel(perf.axis_label())
    if perf.log_scale:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_PlainLogFormatter())
        ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))


def _bits_axis(ax: Axes, n_blocks: int, high: int, low: int) -> None:
    """Top axis: the nominal average bits, high - (k/L)(high - low) (paper, Sec. 1)."""
    step = (high - low) / n_blocks
    top = ax.secondary_xaxis(
        "top", functions=(lambda k: high - k * step, lambda b: (high - b) / step)
    )
    top.set_xlabel("average bits per block weight (nominal)")


def _ordering_notes(curves: list[Curve], model: str, high: int, low: int) -> list[str]:
    have = {(c.metric, c.reverse) for c in curves}
    notes = []
    for metric, reverse in EXPECTED_ORDERINGS:
        if (metric, reverse) not in have:
            extra = ["metric.reverse=true"] if reverse else []
            extra += ["metric.seeds=3"] if metric == "random" else []
            hint = run_hint(model, metric, high, low, *extra)
            notes.append(f"missing {metric_label(metric, reverse)} ({hint})")
    for c in curves:
        if c.metric == "random" and not c.reverse and len(c.seeds) < 2:
            hint = run_hint(model, "random", high, low, "metric.seeds=3")
            notes.append(f"random has one seed, so no band ({hint})")
    return notes


@styled
def bits_figure(mr: ModelRecords, perf: Perf, *, high: int, low: int) -> Drawn:
    """Performance vs k blocks moved from `high` to `low` bits, one curve per ordering
    (records: kind=quantized, high, low); references: unquantized and k = 0."""
    curves, notes = sweep_curves(mr.records, perf, kind="quantized", high=high, low=low)
    if not curves:
        hint = run_hint(mr.model, "ldi", high, low)
        raise MissingRecords(f"no {high}->{low}-bit records (kind=quantized) with {perf} ({hint})")
    fig, ax = new_figure()
    labels = quant_labels([c.quant for c in curves])
    keys = [json.dumps(c.quant, sort_keys=True) for c in curves]
    main = max(set(keys), key=keys.count)  # the backend with most curves: solid lines
    for c, key in zip(curves, keys, strict=True):
        suffix = f" [{labels[key]}]" if len(labels) > 1 else ""
        other = {} if key == main else OTHER_BACKEND
        draw_curve(ax, c, label=metric_label(c.metric, c.reverse) + suffix, **other)
    notes += draw_references(ax, mr, perf, curves, high)
    notes += _ordering_notes(curves, mr.model, high, low)
    n_blocks = curves[0].n_blocks
    k_axis(ax, n_blocks, f"blocks moved from {high} to {low} bits")
    _bits_axis(ax, n_blocks, high, low)
    perf_axis(ax, perf)
    ax.set_title(f"{mr.model}: {high}-bit → {low}-bit")
    legend_beside_if_crowded(ax)
    return Drawn(fig, notes)


def _removal_pair(mr: ModelRecords, perf: Perf, high: int, low: int, order: str):
    """(quantized curve, pruned curve) of `order` at `high` bits; raises MissingRecords."""

    def of_order(curves):
        return [c for c in curves if c.metric == order and not c.reverse]

    quantized = of_order(sweep_curves(mr.records, perf, kind="quantized", high=high, low=low)[0])
    pruned = of_order(sweep_curves(mr.records, perf, kind="pruned", high=high)[0])
    missing = []
    if not quantized:
        hint = run_hint(mr.model, order, high, low)
        missing.append(f"no quantized {order} records at {high}->{low} bits with {perf} ({hint})")
    if not pruned:
        hint = run_hint(mr.model, order, high, None, "baseline=prune")
        missing.append(
            f"no pruned records (kind=pruned, high={high}, metric_canonical={order}, "
            f"reverse=false, k, removed_blocks, with {perf}) ({hint})"
        )
    if missing:
        raise MissingRecords("; ".join(missing))
    q = quantized[0]
    p = next((c for c in pruned if c.quant == q.quant), pruned[0])
    return q, p


def _same_blocks_notes(mr: ModelRecords, order: str, high: int, low: int) -> list[str]:
    """Pruned points whose removed blocks are not the blocks quantized at the same k."""

    def matches(r, kind):
        return r.get("kind") == kind and r.get("metric_canonical") == order and not r.get("reverse")

    low_blocks = {
        r["k"]: r.get("low_blocks")
        for r in mr.records
        if matches(r, "quantized") and r.get("high") == high and r.get("low") == low
    }
    differ = sorted(
        {
            r["k"]
            for r in mr.records
            if matches(r, "pruned")
            and r["k"] in low_blocks
            and sorted(r.get("removed_blocks", [])) != low_blocks[r["k"]]
        }
    )
    return [f"removed blocks differ from the quantized ones at k={differ}"] if differ else []


@styled
def removal_figure(mr: ModelRecords, perf: Perf, *, high: int, low: int, order: str = "ldi"):
    """Quantizing the k least important blocks from `high` to `low` bits vs removing them
    (records: kind=quantized high/low, and kind=pruned high, both ordered by `order`)."""
    quantized, pruned = _removal_pair(mr, perf, high, low, order)
    fig, ax = new_figure()
    name = metric_label(order)
    draw_curve(ax, quantized, label=f"{low}-bit: quantize k blocks ({name} order)")
    style = {"color": PRUNED_COLOUR, "marker": "^"}
    draw_curve(ax, pruned, label=f"removed: prune k blocks ({name} order)", **style)
    notes = draw_references(ax, mr, perf, [quantized], high)
    notes += _same_blocks_notes(mr, order, high, low)
    k_axis(ax, quantized.n_blocks, f"least important blocks quantized to {low} bits or removed")
    perf_axis(ax, perf)
    ax.set_title(f"{mr.model}: quantize vs remove, other blocks {high}-bit")
    ax.legend(fontsize=7)
    return Drawn(fig, notes)


@styled
def size_figure(mr: ModelRecords, perf: Perf, *, order: str = "ldi") -> Drawn:
    """Performance vs `weight_bytes` (the whole model as stored), one line per backend
    and bit pair, for the `order` ordering (records: kind=quantized, not reversed)."""
    pairs = sorted({(r.get("high"), r.get("low")) for r in mr.of_kind("quantized")}, reverse=True)
    lines = []
    for high, low in pairs:
        curves, _ = sweep_curves(mr.records, perf, kind="quantized", high=high, low=low)
        lines += [(high, low, c) for c in curves if c.metric == order and not c.reverse]
    if not lines:
        hint = run_hint(mr.model, order, 4, 2)
        raise MissingRecords(f"no quantized {order} records with weight_bytes and {perf} ({hint})")
    fig, ax = new_figure()
    for i, (high, low, c) in enumerate(lines):
        name = c.quant.get("name", "?")
        megabytes = [b / 1e6 for b in c.weight_bytes]
        style = {"color": backend_colour(name), "marker": "o", "markersize": 3.5}
        linestyle = PAIR_LINESTYLES[i % len(PAIR_LINESTYLES)]
        ax.plot(megabytes, c.mean, label=f"{name} {high}→{low} bits", ls=linestyle, **style)
    reference = reference_value(mr, perf)
    if reference is not None and not perf.is_kl:
        ax.axhline(reference, label="unquantized (16-bit)", **REFERENCE_STYLE)
    ax.set_xlabel("model weights as stored (MB, 1 MB = 10^6 bytes)")
    perf_axis(ax, perf)
    ax.set_title(f"{mr.model}: quality vs size ({metric_label(order)} order)")
    ax.legend(fontsize=7)
    backends = sorted({c.quant.get("name", "?") for *_, c in lines})
    return Drawn(fig, [f"backends with records: {', '.join(backends)}"])
