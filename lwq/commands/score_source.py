"""Where the planner gets an ordering's scores: computed on the loaded model and cached
(the sweep and export: `RunContext.score_source`), or read from the cache only (the dry
run, which loads no weights: `cached_only`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lwq.commands.identity import Identity
from lwq.metrics import Scores
from lwq.metrics.cache import load_cached

# (metric, settings) -> (scores, or None when not available; their cache key)
ScoreSource = Callable[[str, dict], tuple[Scores | None, dict]]


def cached_only(cache_dir: Path, identity: Identity) -> ScoreSource:
    """Scores already in the cache; None for those that are not."""

    def source(metric: str, settings: dict) -> tuple[Scores | None, dict]:
        key = identity.score_key(metric, settings)
        return load_cached(cache_dir, key), key

    return source
