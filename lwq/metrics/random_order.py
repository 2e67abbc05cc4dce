"""The random baseline: a seeded permutation, so every seed is one reproducible order."""

from __future__ import annotations

import torch

from lwq.metrics.base import METRICS, Metric, Scores


def random_scores(model, blocks, calibration=None, *, seed: int = 0) -> Scores:
    """Uniform random scores from `seed`; ties have probability zero."""
    gen = torch.Generator().manual_seed(seed)
    return Scores(tuple(torch.rand(len(blocks), generator=gen, dtype=torch.float64).tolist()))


METRICS.register("random")(Metric("random", random_scores, needs_calibration=False))
