"""Pieces of the run recipe shared by every command: loading, scoring, identities.

These read the composed Hydra config and call library functions with plain arguments.
"""

from __future__ import annotations

import hashlib
import json
import platform

import torch
import transformers
from omegaconf import DictConfig, OmegaConf

import lwq
from lwq.calibration import calibration_ids
from lwq.device import pick_device, pick_dtype
from lwq.evaluation.suite import EvalSpec, Suite
from lwq.metrics import METRICS, Scores
from lwq.models import find_blocks, load_model
from lwq.paths import resolve_model_path, resolve_path
from lwq.scores import cache_key, cached_scores
from lwq.texts import load_texts


def digest(obj) -> str:
    """A short stable hash of a JSON-able identity (record keys, sweep ids)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def plain(node) -> dict | list:
    """A resolved config node as plain Python (JSON-able) data."""
    return OmegaConf.to_container(node, resolve=True)


def model_identity(cfg: DictConfig) -> dict:
    m = cfg.model
    return {"name": m.name, "path": m.path, "revision": m.revision, "dtype": m.dtype}


def versions() -> dict:
    return {
        "lwq": lwq.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def load(cfg: DictConfig):
    """(model, tokenizer, blocks, device) for the configured model."""
    device = pick_device(cfg.device)
    model, tokenizer = load_model(
        resolve_model_path(cfg.model.path),
        dtype=pick_dtype(cfg.model.dtype, device),
        device=device,
        trust_remote_code=cfg.model.trust_remote_code,
        revision=cfg.model.revision,
    )
    return model, tokenizer, find_blocks(model), device


def make_suite(cfg: DictConfig) -> Suite:
    """The evaluation suite of the configured `eval` group, prepared once."""
    e = cfg.eval
    return Suite(
        EvalSpec(
            e.name,
            e.text,
            e.chunk_chars,
            e.limit,
            e.seed,
            e.max_length,
            tasks=tuple(e.tasks),
            source=e.source,
            limits=plain(e.limits),
            bootstrap_iters=e.bootstrap_iters,
        ),
        data_dir=resolve_path(cfg.paths.data),
        workdir=resolve_path(cfg.paths.cache) / "tasks",
        batch_size=e.batch_size,
        cross_check=e.cross_check,
    )


def metric_variants(cfg: DictConfig) -> list[dict]:
    """The metric's settings, once per seed when `metric.seeds` asks for several."""
    settings = plain(cfg.metric.settings)
    seeds = cfg.metric.get("seeds")
    if not seeds or "seed" not in settings:
        return [settings]
    return [settings | {"seed": settings["seed"] + i} for i in range(seeds)]


def calibration(cfg: DictConfig, tokenizer) -> torch.Tensor:
    """The (samples, seq_len) calibration token ids the `calib` group describes."""
    calib = cfg.calib
    texts = load_texts(calib.text, resolve_path(cfg.paths.data))
    return calibration_ids(
        texts, tokenizer, samples=calib.samples, seq_len=calib.seq_len, seed=calib.seed
    )


def importance(
    cfg: DictConfig, model, tokenizer, blocks, settings: dict, metric_name: str | None = None
) -> tuple[Scores, dict, bool]:
    """(scores, cache identity, was_cached) of a metric, from the cache when possible."""
    name = metric_name or cfg.metric.name
    metric = METRICS.get(name)
    calib = plain(cfg.calib)
    key = cache_key(model_identity(cfg), name, settings, calib)

    def compute():
        ids = calibration(cfg, tokenizer) if metric.needs_calibration else None
        return metric.compute(model, blocks, ids, **settings)

    scores, was_cached = cached_scores(resolve_path(cfg.paths.cache), key, compute)
    return scores, key, was_cached
