"""ZD, Z-score Distribution: the share of a block's weights with |z| above a threshold.

Each linear weight is standardised on its own, z = (w - mean) / std (population std, as
scipy.stats.zscore); the block's score pools the counts over its linears, so each matrix
weighs by its size (our choice). The paper reads a *smaller* share as more important.
"""

from __future__ import annotations

import torch

from lwq.errors import LwqError
from lwq.metrics.base import METRICS, Metric, Scores
from lwq.modeling.blocks import block_linears

DIRECTIONS = ("smaller_is_important", "larger_is_important")


def outlier_share(weight: torch.Tensor, threshold: float) -> tuple[int, int]:
    """(number of entries with |z| > threshold, number of entries) of one weight matrix."""
    w = weight.detach().float()
    z = (w - w.mean()) / w.std(correction=0)
    return int((z.abs() > threshold).sum().item()), w.numel()


@torch.no_grad()
def zd_scores(
    model,
    blocks,
    calibration=None,
    *,
    threshold: float = 1.0,
    direction: str = "smaller_is_important",
) -> Scores:
    """Pooled |z| > threshold share per block; needs no data, only the weights."""
    check_zd({"threshold": threshold, "direction": direction})
    values = []
    for block in blocks:
        counts = [outlier_share(m.weight, threshold) for _, m in block_linears(block)]
        values.append(sum(c for c, _ in counts) / sum(n for _, n in counts))
    return Scores(tuple(values), higher_is_important=direction == "larger_is_important")


def check_zd(settings: dict) -> None:
    direction = settings.get("direction", "smaller_is_important")
    if direction not in DIRECTIONS:
        raise LwqError(f"metric.settings.direction must be one of {DIRECTIONS}, got {direction!r}")
    threshold = settings.get("threshold", 1.0)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold < 0:
        raise LwqError(f"metric.settings.threshold must be a number >= 0, got {threshold!r}")


METRICS.register("zd")(Metric("zd", zd_scores, needs_calibration=False, check=check_zd))
