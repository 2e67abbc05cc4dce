"""Per-block figures, read from the `scores` and `ranking` fields of the records:
`intersec_<model>` (overlap of two metrics' top-k sets), `blocks_<model>` (the paper's
Fig. 1: blocks coloured by importance, one row per metric) and `scores_<model>` (raw
scores of every metric per block, one panel each).

Scores come from the newest non-reference record of each metric (`newest_rankings`);
the random order is not an importance measure and is left out of the per-block pictures.
"""

from __future__ import annotations

from lwq.figures.select import MissingRecords, ModelRecords, newest_rankings
from lwq.figures.style import (
    IMPORTANCE_CMAP,
    Drawn,
    metric_colour,
    metric_label,
    new_figure,
    new_panels,
    styled,
)
from lwq.figures.sweeps import run_hint

FIG1_ORDER = ("ldi", "zd", "position")  # LIM first, as in the paper's Fig. 1


def top_k_overlap(ranking_a: list[int], ranking_b: list[int]) -> list[int]:
    """|top-k(a) & top-k(b)| for k = 1..L; rankings list blocks least -> most important."""
    return [len(set(ranking_a[-k:]) & set(ranking_b[-k:])) for k in range(1, len(ranking_a) + 1)]


def rank_importance(scores: list[float], higher_is_important: bool) -> list[float]:
    """Each block's importance rank mapped to [0, 1]: 0 = least, 1 = most important; tied
    scores share their mean rank (all 0.5 if all are equal). Ranks, not scaled scores: on
    a real model one block's LIM can be tens of times the others' (SmolLM2's block 0), and
    a linear colour scale would then show one bright block and the rest alike."""
    n = len(scores)
    if n == 1 or min(scores) == max(scores):
        return [0.5] * n
    order = sorted(range(n), key=lambda i: scores[i] if higher_is_important else -scores[i])
    ranks = [0.0] * n
    start = 0
    while start < n:  # runs of equal scores share the mean of their positions
        end = start
        while end + 1 < n and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for j in range(start, end + 1):
            ranks[order[j]] = (start + end) / 2 / (n - 1)
        start = end + 1
    return ranks


def importance_metrics(mr: ModelRecords) -> dict[str, dict]:
    """The metrics with scores, LIM first, random left out; raises MissingRecords if none."""
    found = newest_rankings(mr)
    found.pop("random", None)
    if not found:
        hint = run_hint(mr.model, "ldi", 4, 2)
        raise MissingRecords(f"no record of an importance metric (ldi, zd, ...) ({hint})")

    def rank(m):
        return (FIG1_ORDER.index(m) if m in FIG1_ORDER else len(FIG1_ORDER), m)

    return {m: found[m] for m in sorted(found, key=rank)}


@styled
def intersec_figure(mr: ModelRecords, a: str = "ldi", b: str = "zd") -> Drawn:
    """Blocks in both the `a` and the `b` top-k most-important sets, for k = 1..L, with
    the overlap two random sets would have on average (k^2 / L) and identical rankings (k)."""
    found = newest_rankings(mr)
    missing = [m for m in (a, b) if m not in found]
    if missing:
        hints = ", ".join(run_hint(mr.model, m, 4, 2) for m in missing)
        raise MissingRecords(f"no records of {' and '.join(missing)} ({hints})")
    overlap = top_k_overlap(found[a]["ranking"], found[b]["ranking"])
    n = len(overlap)
    ks = list(range(1, n + 1))
    fig, ax = new_figure()
    label = f"{metric_label(a)} & {metric_label(b)}"
    ax.plot(ks, overlap, label=label, color=metric_colour(a), marker="o", markersize=3.5)
    ax.plot(ks, ks, label="identical rankings (k)", color="black", ls=":", lw=1)
    chance = [k * k / n for k in ks]
    ax.plot(
        ks, chance, label="random sets, expected (k^2/L)", color=metric_colour("random"), ls="--"
    )
    ax.set_xlabel(f"k, most important blocks per metric (of {n})")
    ax.set_ylabel("blocks in both top-k sets")
    ax.set_title(f"{mr.model}: overlap of {metric_label(a)} and {metric_label(b)} rankings")
    ax.legend(fontsize=7)
    return Drawn(fig)


@styled
def blocks_figure(mr: ModelRecords) -> Drawn:
    """Fig. 1: one row of boxes per metric, block i coloured by its importance rank within
    the metric (`rank_importance`, the paper's green-to-red ranking), its raw score written
    in the box."""
    metrics = importance_metrics(mr)
    rows = [rank_importance(v["scores"], v["higher_is_important"]) for v in metrics.values()]
    n = len(rows[0])
    fig, ax = new_figure((max(5.0, 0.32 * n + 1.5), 0.55 * len(rows) + 1.4))
    image = ax.imshow(rows, cmap=IMPORTANCE_CMAP, vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(len(rows)), [metric_label(m) for m in metrics])
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=7 if n > 24 else None)
    ax.set_xlabel("decoder block (0 = next to the embeddings)")
    ax.grid(False)
    ax.set_xticks([x - 0.5 for x in range(1, n)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, len(rows))], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    size = 6 if n <= 16 else 4.5
    for row, values in enumerate(metrics.values()):
        for i, score in enumerate(values["scores"]):
            shade = "black" if rows[row][i] > 0.6 else "white"
            ax.text(i, row, f"{score:.2g}", ha="center", va="center", fontsize=size, color=shade)
    bar = fig.colorbar(image, ax=ax, pad=0.01)
    bar.set_label("importance rank\n(0 = least, 1 = most)")
    ax.set_title(f"{mr.model}: block importance")
    return Drawn(fig)


@styled
def scores_figure(mr: ModelRecords) -> Drawn:
    """Raw scores per block, one panel per metric stacked on a shared block axis, each
    line in its metric's colour, y zoomed to the data (scores of one metric may differ in
    the third digit); the y label says which direction is important."""
    metrics = importance_metrics(mr)
    n = len(next(iter(metrics.values()))["scores"])
    fig, axes = new_panels(len(metrics), (max(5.0, 0.25 * n + 1.5), 1.5 * len(metrics) + 0.8))
    for ax, (metric, values) in zip(axes, metrics.items(), strict=True):
        direction = "higher" if values["higher_is_important"] else "lower"
        style = {"color": metric_colour(metric), "marker": "o", "markersize": 3.5}
        ax.plot(range(n), values["scores"], label=metric_label(metric), **style)
        ax.set_ylabel(f"{metric_label(metric)} score\n({direction} = important)")
    axes[-1].set_xlabel("decoder block (0 = next to the embeddings)")
    axes[-1].set_xticks(range(n), [str(i) for i in range(n)], fontsize=7 if n > 24 else None)
    axes[0].set_title(f"{mr.model}: importance scores per block")
    return Drawn(fig)
