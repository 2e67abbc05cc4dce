"""Experiment tracking: wandb (offline unless WANDB_MODE says otherwise) or nothing.

The local records stay the source of truth; a tracker only mirrors them, one wandb run
per sweep and one logged step per point.
"""

from __future__ import annotations

import os
from pathlib import Path

from lwq.errors import LwqError


class NullTracker:
    def log(self, step: int, values: dict) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    def __init__(self, *, project: str, name: str, config: dict, mode: str, dir: Path) -> None:
        import wandb

        os.environ.setdefault("WANDB_MODE", mode)
        os.environ.setdefault("WANDB_SILENT", "true")
        Path(dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=name, config=config, dir=str(dir))

    def log(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def finish(self) -> None:
        self.run.finish()


def make_tracker(kind: str, **settings):
    if kind == "none":
        return NullTracker()
    if kind == "wandb":
        return WandbTracker(**settings)
    raise LwqError(f"unknown tracking {kind!r}; use tracking=wandb or tracking=none")


def tracked_values(record: dict) -> dict:
    """What a tracker logs for one record: every metric, flattened, and the x-axes
    (points without a k log k = -1)."""
    result = record["eval"]
    flat = {f"{task}/{m}": v for task, ms in result["tasks"].items() for m, v in ms.items()}
    for metric, value in (result.get("average") or {}).items():
        flat[f"average/{metric}"] = value
    for name, value in (result.get("kl") or {}).items():
        flat[f"kl/{name}"] = value
    if result.get("cross_check"):
        flat["cross_check/token_perplexity"] = result["cross_check"]["token_perplexity"]
    k = record.get("k")
    return flat | {"k": -1 if k is None else k, "avg_bits": record["avg_bits"]}
