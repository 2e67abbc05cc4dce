"""The metric registry and the one function that turns scores into an order."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from lwq.registry import Registry


@dataclass(frozen=True)
class Scores:
    """Raw per-block values and which direction means "more important".

    `details` holds further per-block series a metric measured on the way (e.g. the
    sensitivity at every bit-width, which the budget allocator needs), keyed by name.
    """

    values: tuple[float, ...]
    higher_is_important: bool = True
    details: dict[str, tuple[float, ...]] = field(default_factory=dict, compare=False)
    seconds: float | None = field(default=None, compare=False)  # what computing them took


def _no_check(settings: dict) -> None:
    """Settings a metric accepts by name only (their values need no check before a run)."""


@dataclass(frozen=True)
class Metric:
    """`compute(model, blocks, calibration, **settings) -> Scores`.

    `canonical` names the quantity (aliases share it, and so share cached scores);
    `needs_calibration` says whether `calibration` (token ids) must be given;
    `needs_quantizer` says whether it quantizes blocks itself, in which case the run's
    engine (lwq.quant.engine) is passed as `engine=`. `check(settings)`
    refuses bad setting values before anything loads.
    """

    canonical: str
    compute: Callable[..., Scores]
    needs_calibration: bool
    needs_quantizer: bool = False
    check: Callable[[dict], None] = _no_check

    def setting_names(self) -> list[str]:
        """The settings `compute` takes (keyword parameters after its inputs)."""
        inputs = {"model", "blocks", "calibration", "engine"}
        return [
            p.name
            for p in inspect.signature(self.compute).parameters.values()
            if p.name not in inputs and p.kind is not inspect.Parameter.VAR_KEYWORD
        ]


METRICS: Registry[Metric] = Registry("metric")


def ranking(scores: Scores, *, reverse: bool = False) -> list[int]:
    """Block indices from least to most important; ties keep the lower index first.

    `reverse=True` is the sanity-bound baseline: the most important blocks go first.
    """
    sign = 1.0 if scores.higher_is_important else -1.0
    order = sorted(range(len(scores.values)), key=lambda i: (sign * scores.values[i], i))
    return order[::-1] if reverse else order
