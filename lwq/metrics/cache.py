"""Importance scores computed once and cached on disk, one file per score key
(lwq.results.keys.score_key: model, calibration, metric, settings)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lwq.errors import LwqError
from lwq.metrics.base import Scores
from lwq.runtime import digest


def _path(cache_dir: Path, key: dict) -> Path:
    return Path(cache_dir) / "scores" / f"{key['metric']}-{digest(key, 16)}.json"


def load_cached(cache_dir: Path, key: dict) -> Scores | None:
    path = _path(cache_dir, key)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data["key"] != key:
            raise ValueError("key mismatch")
        details = {name: tuple(map(float, v)) for name, v in data.get("details", {}).items()}
        return Scores(
            tuple(float(v) for v in data["values"]),
            bool(data["higher_is_important"]),
            details,
            data.get("seconds"),  # absent from caches written before it was kept
        )
    except (ValueError, KeyError, TypeError) as err:
        raise LwqError(f"score cache {path} is corrupt ({err}); delete it to recompute") from err


def store(cache_dir: Path, key: dict, scores: Scores) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves half a cache file."""
    path = _path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "key": key,
        "values": list(scores.values),
        "higher_is_important": scores.higher_is_important,
        "details": {name: list(v) for name, v in scores.details.items()},
        "seconds": scores.seconds,
    }
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)
    return path
