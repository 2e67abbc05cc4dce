"""Predicted against realized damage of every evaluated plan (the allocation issue).

The exact allocator assumes that block damages add up: a plan's damage is the sum over its
blocks of the KL measured with that block alone quantized (the sensitivity table). When the
run's table is cached (the one `budget=` allocates from: KL at every width of
`allowed_bits`, on the calibration tokens), each evaluated plan's record gets
`damage.predicted_kl` (that sum; 0 for blocks at 16 bits) and `damage.calibration_kl`
(the KL of the whole installed plan on the same tokens, lwq.metrics.sensitivity's
CalibrationKL); the held-out KL is the record's `eval.kl.mean`. Their agreement says how
far additivity holds on a model. With `allocate.unit` finer than blocks the table has a row
per unit (lwq.units) and a plan's prediction sums its units' rows at their widths (a block
plan: every unit of a block at the block's width).
"""

from __future__ import annotations

from lwq.errors import LwqError
from lwq.evaluation.logits import DEFAULT_GB
from lwq.metrics.cache import load_cached
from lwq.metrics.sensitivity import CalibrationKL
from lwq.plan import Plan
from lwq.quant.base import FULL_PRECISION
from lwq.units import Unit, linear_counts, unit_bits_of


class DamageMeter:
    """Predicted (summed table) and realized (whole plan) KL on the calibration tokens."""

    def __init__(self, ctx, table: dict[str, tuple[float, ...]], units: list[Unit]) -> None:
        self.table = table
        self.units = units
        self.n_linears = linear_counts(units, len(ctx.blocks))
        memory = ctx.logits_memory or DEFAULT_GB
        self.reference = CalibrationKL.of(ctx.model, ctx.calibration(), 8, memory)  # as loaded

    def predicted(self, plan: Plan) -> float | None:
        """Summed single-unit KLs, or None when a width of `plan` is not in the table or a
        unit's linears have different widths in it."""
        try:
            widths = unit_bits_of(plan, self.units, self.n_linears)
        except LwqError:
            return None
        total = 0.0
        for u, bits in enumerate(widths):
            if bits == FULL_PRECISION:
                continue
            column = self.table.get(f"kl@{bits}")
            if column is None or len(column) != len(self.units):
                return None
            total += column[u]
        return total

    def measure(self, plan: Plan) -> dict | None:
        """{"predicted_kl", "calibration_kl"} of the plan installed now, or None."""
        predicted = self.predicted(plan)
        if predicted is None:
            return None
        realized, _ = self.reference.measure()
        return {"predicted_kl": predicted, "calibration_kl": realized}


def damage_meter(ctx, sensitivity_key: dict, units: list[Unit]) -> DamageMeter | None:
    """A meter from the cached sensitivity table under `sensitivity_key` (one row per unit
    of `units`), if there is one."""
    scores = load_cached(ctx.cache_dir, sensitivity_key)
    if scores is None or not scores.details:
        return None
    return DamageMeter(ctx, dict(scores.details), units)
