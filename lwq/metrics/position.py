"""A zero-cost position prior (SliderQuant, arXiv 2603.25284): the shallowest and deepest
blocks are the most sensitive, the middle ones the least, in a U shape."""

from __future__ import annotations

from lwq.metrics.base import METRICS, Metric, Scores


def position_scores(model, blocks, calibration=None) -> Scores:
    """|i - centre| / centre: 1 for the first and last block, 0 (or near) in the middle."""
    n = len(blocks)
    centre = (n - 1) / 2
    if centre == 0:
        return Scores((1.0,))
    return Scores(tuple(abs(i - centre) / centre for i in range(n)))


METRICS.register("position")(Metric("position", position_scores, needs_calibration=False))
