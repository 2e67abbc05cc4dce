"""The run recipe: load once, score once, then evaluate every point of the fraction sweep.

This is the one place that reads the composed Hydra config; everything it calls takes
plain typed arguments.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict

import torch
import transformers
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import lwq
from lwq.apply import PlanApplier
from lwq.calibration import calibration_ids
from lwq.cost import plan_cost
from lwq.device import pick_device, pick_dtype
from lwq.evaluation.suite import EvalSpec, Suite
from lwq.metrics import METRICS, ranking
from lwq.models import find_blocks, load_model
from lwq.paths import resolve_path
from lwq.plan import Plan, sweep_points, two_level_plan
from lwq.quant import check_bits, make_backend
from lwq.records import RecordStore
from lwq.scores import cache_key, cached_scores
from lwq.summary import format_table
from lwq.texts import load_texts
from lwq.tracking import make_tracker


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def model_identity(cfg: DictConfig) -> dict:
    m = cfg.model
    return {"name": m.name, "path": m.path, "revision": m.revision, "dtype": m.dtype}


def eval_spec(cfg: DictConfig) -> EvalSpec:
    e = cfg.eval
    return EvalSpec(e.name, e.text, e.chunk_chars, e.limit, e.seed, e.max_length)


def load(cfg: DictConfig):
    """(model, tokenizer, blocks, device) for the configured model."""
    device = pick_device(cfg.device)
    model, tokenizer = load_model(
        str(resolve_path(cfg.model.path)),
        dtype=pick_dtype(cfg.model.dtype, device),
        device=device,
        trust_remote_code=cfg.model.trust_remote_code,
        revision=cfg.model.revision,
    )
    return model, tokenizer, find_blocks(model), device


def importance(cfg: DictConfig, model, tokenizer, blocks):
    """(scores, cache identity, was_cached) of the configured metric, from cache when possible."""
    metric = METRICS.get(cfg.metric.name)
    settings = OmegaConf.to_container(cfg.metric.settings, resolve=True)
    calib = OmegaConf.to_container(cfg.calib, resolve=True)
    key = cache_key(model_identity(cfg), cfg.metric.name, settings, calib)

    def compute():
        ids = None
        if metric.needs_calibration:
            texts = load_texts(calib["text"], resolve_path(cfg.paths.data))
            ids = calibration_ids(
                texts,
                tokenizer,
                samples=calib["samples"],
                seq_len=calib["seq_len"],
                seed=calib["seed"],
            )
        return metric.compute(model, blocks, ids, **settings)

    scores, was_cached = cached_scores(resolve_path(cfg.paths.cache), key, compute)
    return scores, key, was_cached


def versions() -> dict:
    return {
        "lwq": lwq.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def run_scores(cfg: DictConfig) -> dict:
    """`command=scores`: print each block's score and the resulting order."""
    model, tokenizer, blocks, _ = load(cfg)
    scores, _, was_cached = importance(cfg, model, tokenizer, blocks)
    order = ranking(scores, reverse=cfg.metric.reverse)
    origin = "cached" if was_cached else "computed"
    print(f"{cfg.metric.name} scores of {cfg.model.name} ({origin}):")
    for i, value in enumerate(scores.values):
        print(f"  block {i:3d}  {value:.6f}  rank {order.index(i)}")
    print("least -> most important:", order)
    return {"scores": list(scores.values), "ranking": order}


def run_sweep(cfg: DictConfig) -> list[dict]:
    """`command=sweep`: every point of the fraction sweep, resuming from the records."""
    backend = make_backend(cfg.quant.name, **cfg.quant.settings)
    check_bits(backend, cfg.sweep.high)  # refuse bad bits before any heavy work
    check_bits(backend, cfg.sweep.low)
    model, tokenizer, blocks, device = load(cfg)
    ks = sweep_points(len(blocks), cfg.sweep.fractions, cfg.sweep.blocks)
    store = RecordStore(resolve_path(cfg.paths.results) / cfg.model.name / "records.jsonl")
    done = store.done_keys()

    scores, score_key, _ = importance(cfg, model, tokenizer, blocks)
    order = ranking(scores, reverse=cfg.metric.reverse)
    spec = eval_spec(cfg)
    suite = Suite(
        spec,
        data_dir=resolve_path(cfg.paths.data),
        workdir=resolve_path(cfg.paths.cache) / "tasks",
        batch_size=cfg.eval.batch_size,
        cross_check=cfg.eval.cross_check,
    )
    reference_key = "reference-" + _digest({"model": model_identity(cfg), "eval": asdict(spec)})
    quant = {"name": backend.name, **backend.settings()}
    sweep_id = _digest(
        {
            "model": model_identity(cfg),
            "eval": asdict(spec),
            "metric": {**score_key, "reverse": cfg.metric.reverse},
            "quant": quant,
            "high": cfg.sweep.high,
            "low": cfg.sweep.low,
        }
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    common = {
        "model": cfg.model.name,
        "metric": cfg.metric.name,
        "metric_canonical": score_key["metric"],
        "reverse": cfg.metric.reverse,
        "scores": list(scores.values),
        "higher_is_important": scores.higher_is_important,
        "ranking": order,
        "sweep_id": sweep_id,
        "quant": quant,
        "eval_provenance": suite.provenance(),
        "versions": versions(),
        "device": str(device),
        "config": config,
    }
    tracker = _tracker(cfg, f"{cfg.model.name}-{cfg.metric.name}-{sweep_id[:8]}", config)
    written = []

    def evaluate_point(key: str, point: dict) -> None:
        started = time.time()
        result = suite.evaluate(model, tokenizer)
        record = {
            **common,
            **point,
            "point_key": key,
            "eval": result,
            "seconds": round(time.time() - started, 2),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        store.append(record)
        tracker.log(len(written), _flat_metrics(result) | _axes(point))  # one step per point
        written.append(record)

    if cfg.sweep.reference and reference_key not in done:
        tqdm.write("evaluating the unquantized model (reference)")
        evaluate_point(reference_key, {"kind": "reference", "avg_bits": 16.0, "k": None})

    plans = {k: two_level_plan(order, k, high=cfg.sweep.high, low=cfg.sweep.low) for k in ks}
    costs = {k: plan_cost(model, blocks, plan, backend) for k, plan in plans.items()}
    applier = PlanApplier(blocks, backend)
    try:
        for k in tqdm(ks, desc=f"sweep {cfg.model.name} {cfg.metric.name}", unit="point"):
            key = f"{sweep_id}-k{k}"
            if key in done:
                tqdm.write(f"k={k}: already in {store.path}, skipped")
                continue
            started = time.time()
            applier.apply(plans[k])
            point = _point(k, plans[k], costs[k], order, cfg.sweep)
            evaluate_point(key, point | {"quantize_seconds": round(time.time() - started, 3)})
    finally:
        applier.restore()
        tracker.finish()
    ours = {reference_key} | {f"{sweep_id}-k{k}" for k in ks}
    print(format_table([r for r in store.read() if r.get("point_key") in ours]))
    return written


def _point(k: int, plan: Plan, cost, order: list[int], sweep) -> dict:
    """The per-point part of a record: where it sits in the sweep and what it costs."""
    n = len(plan.bits)
    return {
        "kind": "quantized",
        "k": k,
        "n_blocks": n,
        "fraction": k / n,
        "high": sweep.high,
        "low": sweep.low,
        "plan": list(plan.bits),
        "low_blocks": sorted(order[:k]),
        "avg_bits": cost.avg_bits,
        "bits_per_weight": cost.bits_per_weight,
        "weight_bytes": cost.weight_bytes,
        "block_bytes": list(cost.block_bytes),
    }


def _tracker(cfg: DictConfig, run_name: str, config: dict):
    if cfg.tracking.name == "none":
        return make_tracker("none")
    return make_tracker(
        cfg.tracking.name,
        project=cfg.tracking.project,
        name=run_name,
        config=config,
        mode=cfg.tracking.mode,
        dir=resolve_path(cfg.paths.results),
    )


def _axes(point: dict) -> dict:
    """The x-axis values of a point as tracked (the reference has k = -1)."""
    k = point["k"]
    return {"k": -1 if k is None else k, "avg_bits": point["avg_bits"]}


def _flat_metrics(result: dict) -> dict:
    flat = {f"{task}/{m}": v for task, ms in result["tasks"].items() for m, v in ms.items()}
    if result["cross_check"]:
        flat["cross_check/token_perplexity"] = result["cross_check"]["token_perplexity"]
    return flat
