"""What a run loads or prepares once, as objects (never config): the model and its blocks,
the backend and its engine, the size table, the calibration windows, and for an
evaluating command the suite, the record store and the tracker.

`open_context` runs the file checks (lwq.commands.preflight) and builds the evaluation
suite (unknown tasks, missing data) before a single weight is loaded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lwq.claims import computed_once
from lwq.commands import record_fields
from lwq.commands.identity import Identity, run_identity
from lwq.commands.preflight import check_inputs, hub_options
from lwq.commands.score_source import ScoreSource
from lwq.commands.search_plan import searched_plan
from lwq.config import RunConfig
from lwq.data import calibration_ids, load_texts
from lwq.evaluation.logits import DEFAULT_GB
from lwq.evaluation.suite import Suite
from lwq.metrics import METRICS, Scores
from lwq.metrics.cache import load_cached
from lwq.metrics.cache import store as store_scores
from lwq.modeling.blocks import find_blocks
from lwq.modeling.capture import BlockInputs
from lwq.modeling.load import load_model
from lwq.plan import Plan
from lwq.provenance import git_state, library_versions
from lwq.quant import Backend
from lwq.quant.cost import SizeTable
from lwq.quant.engine import Engine
from lwq.quant.install import PlanApplier
from lwq.quant.originals import make_originals
from lwq.quant.store import VariantStore
from lwq.results.record import shared_fields
from lwq.results.store import RecordStore
from lwq.runtime import digest, pick_device, pick_dtype, resolve_model_path

CAPTURE_BATCH = 8  # calibration sequences per forward when capturing block inputs


@dataclass
class RunContext:
    """A run's loaded objects. Only the command's point loop mutates the model."""

    model: torch.nn.Module
    tokenizer: object
    blocks: torch.nn.ModuleList
    device: torch.device
    backend: Backend
    engine: Engine
    sizes: SizeTable
    identity: Identity
    cache_dir: Path
    calibration: Callable[[], torch.Tensor]
    suite: Suite | None = None
    kl_cache: Path | None = None  # the unquantized model's held-out distributions, for KL
    store: RecordStore | None = None
    tracker: object = None
    shared: dict = field(default_factory=dict)  # fields every record of the run has
    logits_memory: float | None = DEFAULT_GB  # GB of log-probabilities at once (eval.logits_memory)
    reuse_memory: float | None = None  # GB of kept hidden states (eval.reuse_memory); None = off
    reuse_on: str = "host"  # where they are kept: host | device
    originals: str = "disk"  # where changed blocks' originals wait: disk | host

    def applier(self, packed: bool = False) -> PlanApplier:
        parked = make_originals(self.originals, self.cache_dir / "scratch")
        return PlanApplier(self.blocks, self.engine, packed, parked)

    def scores(self, metric: str, settings: dict) -> tuple[Scores, dict, bool]:
        """(scores, score key, was_cached) of `metric` with `settings`, cached on disk."""
        entry = METRICS.get(metric)
        key = self.identity.score_key(metric, settings)

        def compute() -> Scores:
            calibration = self.calibration() if entry.needs_calibration else None
            extra = {}
            if entry.needs_quantizer:  # long: its finished rows are kept through a kill
                extra = {"engine": self.engine, "logits_memory": self.logits_memory}
                extra["checkpoint"] = self.cache_dir / "scores" / f"{digest(key)}.rows.partial"
            started = time.time()
            scores = entry.compute(self.model, self.blocks, calibration, **settings, **extra)
            if scores.seconds is None:  # a resumed metric counts its earlier runs itself
                scores = dataclasses.replace(scores, seconds=round(time.time() - started, 2))
            store_scores(self.cache_dir, key, scores)
            return scores

        scores, made = computed_once(
            self.cache_dir / "claims",
            f"scores-{digest(key)}",
            lambda: load_cached(self.cache_dir, key),
            compute,
        )  # parallel jobs of a multirun compute each score once
        return scores, key, not made

    def score_source(self) -> ScoreSource:
        """The planner's scores: cached, or computed on this model and cached."""
        return lambda metric, settings: self.scores(metric, settings)[:2]

    def search_source(self):
        """`allocate.method=search`'s plan finder on this model (cached on disk)."""

        def searched(problem, start, settings, key, to_plan=Plan):
            return searched_plan(self, problem, start, settings, key, to_plan)

        return searched

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()


def open_context(run: RunConfig, *, evaluate: bool) -> RunContext:
    """Load what `run` needs; `evaluate` adds the suite, the record store and the tracker."""
    backend = run.quant.backend
    check_inputs(run, evaluate=evaluate)
    suite = make_suite(run) if evaluate else None  # bad tasks, missing data: before the model
    model, tokenizer, blocks, device = load(run)
    calibration = _calibration(run, tokenizer)
    identity = run_identity(run, backend, None if suite is None else suite.identity())
    engine = Engine(
        backend,
        lambda: BlockInputs.capture(model, blocks, calibration(), CAPTURE_BATCH),
        store=VariantStore(
            run.paths.cache / "variants", {"model": identity.model, "quant": identity.quant}
        ),
        keep_inputs=run.eval.reuse_memory,  # the mixed blocks' walks start at kept inputs
    )
    context = RunContext(
        model=model,
        tokenizer=tokenizer,
        blocks=blocks,
        device=device,
        backend=backend,
        engine=engine,
        sizes=SizeTable(model, blocks, backend),
        identity=identity,
        cache_dir=run.paths.cache,
        calibration=calibration,
        logits_memory=run.eval.logits_memory,
        reuse_memory=run.eval.reuse_memory,
        reuse_on=run.eval.reuse_on,
        originals=run.originals,
    )
    if evaluate:
        context.suite = suite
        if suite.kl_key() is not None:
            key = digest({"model": identity.model, **suite.kl_key()})
            context.kl_cache = run.paths.cache / "kl" / f"{key}.safetensors"
        context.store = RecordStore(run.paths.results / run.model.name / "records.jsonl")
        context.store.read()  # reports damaged lines once, with their line numbers
        context.shared = shared_fields(
            model=run.model.name,
            quant=identity.quant,
            eval_provenance=suite.provenance(),
            versions=library_versions(backend.name),
            device=str(device),
            config=run.plain,
            seed=run.seed,
            code=git_state(),
            data_sha256=record_fields.data_digests(run, suite),
            weights_sha256=record_fields.weight_digests(run),
            weights_source=record_fields.weights_source(run),
        )
        context.tracker = record_fields.tracker(run)
    return context


def make_suite(run: RunConfig) -> Suite:
    """The run's evaluation suite, its data read and its tasks prepared once."""
    e = run.eval
    return Suite(
        e.spec,
        data_dir=run.paths.data,
        workdir=run.paths.cache / "tasks",
        batch_size=e.batch_size,
        cross_check=e.cross_check,
        kl_top_k=e.kl_top_k,
        verbose=run.verbose,
        text_by=e.text_by,
        logits_memory=e.logits_memory,
    ).prepare()


def load(run: RunConfig) -> tuple[torch.nn.Module, object, torch.nn.ModuleList, torch.device]:
    """(model, tokenizer, blocks, device) of the run's checkpoint."""
    if run.model.trust_remote_code:
        print(f"trust_remote_code is on for {run.model.name} (its model config asks for it)")
    device = pick_device(run.device)
    model, tokenizer = load_model(
        resolve_model_path(run.model.path),
        dtype=pick_dtype(run.model.dtype, device),
        device=device,
        **_weights_options(run),
    )
    return model, tokenizer, find_blocks(model), device


def _weights_options(run: RunConfig) -> dict:
    return hub_options(run) | {"allow_pickle": run.model.allow_pickle}


def _calibration(run: RunConfig, tokenizer) -> Callable[[], torch.Tensor]:
    """The (samples, seq_len) calibration ids, made on first use and kept."""
    made: list[torch.Tensor] = []
    calib, data_dir = run.calib, run.paths.data

    def calibration() -> torch.Tensor:
        if not made:
            texts = load_texts(calib.text, data_dir)
            made.append(
                calibration_ids(
                    texts, tokenizer, samples=calib.samples, seq_len=calib.seq_len, seed=calib.seed
                )
            )
        return made[0]

    return calibration
