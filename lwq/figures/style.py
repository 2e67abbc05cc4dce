"""The one place that decides how figures look: colours, labels, sizes, file formats.

Every figure takes its colours from here, so a metric has the same colour in every
figure (LIM blue, ZD orange, random grey, ...); a reversed ordering keeps its metric's
colour and is drawn dashed. Figures are built on `matplotlib.figure.Figure` directly
(no pyplot): no global figure registry, no GUI backend, nothing to close.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Colours per canonical metric name (records' `metric_canonical`), from the tab10 palette.
METRIC_COLOURS = {
    "ldi": "#1f77b4",  # LIM / ldi: blue
    "zd": "#ff7f0e",  # ZD: orange
    "random": "#7f7f7f",  # random order: grey
    "position": "#2ca02c",  # position prior: green
}
# Other metrics get one of the unused tab10 colours, picked by a hash of the name, so a
# metric has the same colour in every figure and every process.
_SPARE_COLOURS = ["#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#d62728"]

METRIC_LABELS = {"ldi": "LIM (ldi)", "zd": "ZD", "random": "random", "position": "position"}

BACKEND_COLOURS = {"rtn": "#1f77b4"}
PRUNED_COLOUR = "#d62728"  # removing blocks (removal figures)
REFERENCE_STYLE = {"color": "black", "linestyle": "-", "linewidth": 1.0}  # unquantized
ALL_HIGH_STYLE = {"color": "#555555", "linestyle": ":", "linewidth": 1.2}  # k = 0
IMPORTANCE_CMAP = "viridis"  # importance heat maps: dark = least, bright = most important
BAND_ALPHA = 0.2

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.bbox": "tight",
    "savefig.dpi": 200,
    "pdf.fonttype": 42,  # embed TrueType: text stays editable and searchable in the paper
}
FIGSIZE = (5.0, 3.4)  # inches: one column of a two-column paper at a readable scale
FORMATS = ("png", "pdf")


def metric_colour(metric: str) -> str:
    """The colour of a canonical metric name, the same everywhere."""
    if metric in METRIC_COLOURS:
        return METRIC_COLOURS[metric]
    index = int(hashlib.sha256(metric.encode()).hexdigest(), 16) % len(_SPARE_COLOURS)
    return _SPARE_COLOURS[index]


def backend_colour(name: str) -> str:
    return BACKEND_COLOURS.get(name, metric_colour(f"backend:{name}"))


def metric_label(metric: str, reverse: bool = False) -> str:
    """Legend text of an ordering: `LIM (ldi)`, `reverse ZD`, ..."""
    label = METRIC_LABELS.get(metric, metric)
    return f"reverse {label}" if reverse else label


def line_style(metric: str, reverse: bool = False) -> dict:
    """Keyword arguments of `ax.plot` for the curve of one ordering."""
    return {
        "color": metric_colour(metric),
        "linestyle": "--" if reverse else "-",
        "marker": "s" if reverse else "o",
        "markersize": 3.5,
        "linewidth": 1.5,
    }


def styled(build: Callable) -> Callable:
    """Decorator: draw the whole figure inside lwq's rc style (fonts, grid are read at
    creation time, so the style must be active while drawing, not only when saving)."""

    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(STYLE):
            return build(*args, **kwargs)

    return wrapper


def new_figure(figsize: tuple[float, float] = FIGSIZE) -> tuple[Figure, Axes]:
    """A Figure with one Axes, laid out so labels never overlap."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def new_panels(rows: int, figsize: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """A Figure with `rows` Axes stacked on one shared x axis."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, list(fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0])


def save(fig: Figure, out_dir: Path, name: str, formats=FORMATS) -> list[Path]:
    """Write `fig` as `<out_dir>/<name>.<fmt>` for each format; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with mpl.rc_context(STYLE):
        for fmt in formats:
            path = out_dir / f"{name}.{fmt}"
            fig.savefig(path, format=fmt)
            paths.append(path)
    return paths


@dataclass
class Drawn:
    """A drawn figure and notes on what it lacks (printed on the figure's stdout line)."""

    fig: Figure
    notes: list[str] = field(default_factory=list)
