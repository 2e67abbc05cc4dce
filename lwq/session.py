"""A sweep session: what is loaded or prepared once, and how one point becomes a record."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from omegaconf import DictConfig

from lwq.apply import PlanApplier
from lwq.calibrated import variants_for
from lwq.cost import plan_cost
from lwq.memory import peak_memory
from lwq.paths import resolve_path
from lwq.plan import Plan, blocks_for_fraction
from lwq.quant import check_bits, make_backend
from lwq.recipe import calibration, load, make_suite, plain, versions
from lwq.records import RecordStore
from lwq.tracking import make_tracker


@dataclass
class Session:
    """Everything a sweep loads or prepares once, and what it has written so far."""

    cfg: DictConfig
    model: object
    tokenizer: object
    blocks: object
    backend: object
    suite: object
    store: RecordStore
    tracker: object
    common: dict
    done: set[str]
    device: object
    variants: object = None  # CalibratedVariants of a calibrated backend (GPTQ)
    written: list[dict] = field(default_factory=list)

    def applier(self) -> PlanApplier:
        """A PlanApplier for this session's blocks and backend (sharing built variants)."""
        return PlanApplier(self.blocks, self.backend, variants=self.variants)

    def install(self, applier: PlanApplier, plan: Plan) -> dict:
        """Apply `plan`; the quantize part of its record: seconds and peak memory."""
        started = time.time()
        with peak_memory(self.device) as memory:
            applier.apply(plan)
        return {"seconds": time.time() - started, "memory": memory}

    def evaluate(self, key: str, point: dict) -> dict:
        """Evaluate the model as it is now and append one record (and one tracked step)."""
        started = time.time()
        with peak_memory(self.device) as memory:
            result = self.suite.evaluate(self.model, self.tokenizer)
        record = {
            **self.common,
            **point,
            "point_key": key,
            "eval": result,
            "eval_memory": memory,
            "seconds": round(time.time() - started, 2),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.store.append(record)
        self.tracker.log(len(self.written), _flat_metrics(result) | _axes(point))
        self.written.append(record)
        self.done.add(key)
        return record

    def evaluate_plan(self, key: str, kind: str, plan: Plan, extra: dict | None = None) -> None:
        """Install `plan` alone, evaluate it (unless already recorded), restore the model."""
        if key in self.done:
            return
        applier = self.applier()
        try:
            point = plan_point(kind, self, plan, self.install(applier, plan))
            self.evaluate(key, point | (extra or {}))
        finally:
            applier.restore()


def open_session(cfg: DictConfig) -> Session:
    backend = make_backend(cfg.quant.name, **cfg.quant.settings)
    check_bits(backend, cfg.sweep.high)  # refuse bad bits before any heavy work
    check_bits(backend, cfg.sweep.low)
    for fraction in cfg.sweep.fractions or []:
        blocks_for_fraction(fraction, 1)  # a bad fraction fails before the model loads
    suite = make_suite(cfg)  # bad task names and missing data fail before the model loads
    model, tokenizer, blocks, device = load(cfg)
    store = RecordStore(resolve_path(cfg.paths.results) / cfg.model.name / "records.jsonl")
    config = plain(cfg)
    quant = {"name": backend.name, **backend.settings()}
    variants = None
    if getattr(backend, "calibrated", False):
        quant["calib"] = plain(cfg.calib)  # the calibration set is part of the quantizer
        variants = variants_for(backend, model, blocks, calibration(cfg, tokenizer))
    common = {
        "model": cfg.model.name,
        "quant": quant,
        "eval_provenance": suite.provenance(),
        "versions": versions(),
        "device": str(device),
        "config": config,
    }
    run_name = f"{cfg.model.name}-{cfg.metric.name}-{cfg.baseline.name}-{time.strftime('%H%M%S')}"
    tracker = _tracker(cfg, run_name, config)
    return Session(
        cfg,
        model,
        tokenizer,
        blocks,
        backend,
        suite,
        store,
        tracker,
        common,
        store.done_keys(),
        device,
        variants,
    )


def plan_point(
    kind: str,
    s: Session,
    plan: Plan,
    installed: dict,
    *,
    k: int | None = None,
    removed: tuple[int, ...] = (),
) -> dict:
    """The per-point part of a record for an installed plan: its bits and what it costs.

    `installed` is what `Session.install` measured.
    `k` is the number of blocks the sweep moved low (or removed, for `kind="pruned"`);
    plans not made by an ordering have none. `removed` blocks (the pruning baseline) are
    out of the model: they cost nothing and the nominal average is over the kept blocks.
    """
    cost = plan_cost(s.model, s.blocks, plan, s.backend, removed=removed)
    n = len(plan.bits)
    point = {
        "kind": kind,
        "k": k,
        "n_blocks": n,
        "fraction": None if k is None else k / n,
        "high": s.cfg.sweep.high,
        "low": None if kind == "pruned" else s.cfg.sweep.low,
        "plan": list(plan.bits),
        "avg_bits": cost.avg_bits,
        "bits_per_weight": cost.bits_per_weight,
        "weight_bytes": cost.weight_bytes,
        "block_bytes": list(cost.block_bytes),
        "quantize_seconds": round(installed["seconds"], 3),
        "quantize_memory": installed["memory"],
    }
    if kind == "pruned":
        point["removed_blocks"] = list(removed)
    return point


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
    """The x-axis values of a point as tracked (points without a k log k = -1)."""
    k = point.get("k")
    return {"k": -1 if k is None else k, "avg_bits": point["avg_bits"]}


def _flat_metrics(result: dict) -> dict:
    flat = {f"{task}/{m}": v for task, ms in result["tasks"].items() for m, v in ms.items()}
    for metric, value in (result.get("average") or {}).items():
        flat[f"average/{metric}"] = value
    if result.get("cross_check"):
        flat["cross_check/token_perplexity"] = result["cross_check"]["token_perplexity"]
    return flat
