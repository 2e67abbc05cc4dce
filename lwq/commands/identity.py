"""What a run's numbers depend on, built once from the run and its backend: the plain data
every key hashes (lwq.results.keys). The sweep, the dry run and export build it here, so
a point planned by one is the point recorded by another."""

from __future__ import annotations

from dataclasses import dataclass

from lwq.config import RunConfig
from lwq.quant.base import Backend, uses_calibration
from lwq.results.keys import quant_identity, score_key


@dataclass(frozen=True)
class Identity:
    """What the numbers depend on, as plain data for keys (lwq.results.keys)."""

    model: dict
    calibration: dict
    quant: dict  # the backend as built, plus its calibration set when it uses one
    quant_config: dict  # the backend as configured (a quantizing metric's score key)
    evaluation: dict | None = None

    def score_key(self, metric: str, settings: dict) -> dict:
        """The cache key of `metric`'s scores with `settings` for this model and calibration."""
        return score_key(self.model, metric, settings, self.calibration, self.quant_config)


def run_identity(run: RunConfig, backend: Backend, evaluation: dict | None) -> Identity:
    """The identity of `run` with `backend` (built from run.quant) and an evaluation's."""
    calibration = run.calib.identity()
    return Identity(
        model=run.model.identity(),
        calibration=calibration,
        quant=quant_identity(
            backend.name,
            backend.settings(),
            calibration if uses_calibration(backend) else None,
        ),
        quant_config=run.quant.as_config(),
        evaluation=evaluation,
    )
