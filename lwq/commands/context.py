"""What a run loads or prepares once, as objects (never config): the model and its blocks,
the backend and its variant source, the size table, the calibration windows, and for an
evaluating command the suite, the record store and the tracker.

`open_context` is also the last line of input checking: it builds the evaluation suite
(unknown tasks, missing data) and reads the checkpoint's config (its context length and
number of blocks) before a single weight is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lwq.claims import computed_once
from lwq.config import RunConfig
from lwq.data import calibration_ids, load_texts, source_files
from lwq.errors import LwqError
from lwq.evaluation.index import load_index
from lwq.evaluation.local_data import FILES, local_files
from lwq.evaluation.suite import Suite
from lwq.evaluation.tasks import check_task_names
from lwq.metrics import METRICS, Scores
from lwq.metrics.cache import load_cached
from lwq.metrics.cache import store as store_scores
from lwq.modeling import gguf
from lwq.modeling.blocks import find_blocks
from lwq.modeling.capture import BlockInputs
from lwq.modeling.load import CheckpointFacts, load_model, read_checkpoint_facts
from lwq.provenance import files_sha256, git_state, library_versions, texts_sha256, weight_files
from lwq.quant import Backend, make_backend
from lwq.quant.cost import SizeTable
from lwq.quant.install import PlanApplier
from lwq.quant.variants import Variants, VariantStore, make_variants
from lwq.results.keys import quant_identity, score_key
from lwq.results.record import shared_fields
from lwq.results.store import RecordStore
from lwq.results.tracking import make_tracker
from lwq.runtime import digest, pick_device, pick_dtype, resolve_model_path

CAPTURE_BATCH = 8  # calibration sequences per forward when capturing block inputs


@dataclass(frozen=True)
class Identity:
    """What the numbers depend on, as plain data for keys (lwq.results.keys)."""

    model: dict
    calibration: dict
    quant: dict  # the backend as built, plus its calibration set when calibrated
    quant_config: dict  # the backend as configured (a quantizing metric's score key)
    evaluation: dict | None = None


@dataclass
class RunContext:
    """A run's loaded objects. Only the command's point loop mutates the model."""

    model: torch.nn.Module
    tokenizer: object
    blocks: torch.nn.ModuleList
    device: torch.device
    backend: Backend
    variants: Variants
    sizes: SizeTable
    identity: Identity
    cache_dir: Path
    calibration: Callable[[], torch.Tensor]
    suite: Suite | None = None
    kl_cache: Path | None = None  # the unquantized model's held-out distributions, for KL
    store: RecordStore | None = None
    tracker: object = None
    shared: dict = field(default_factory=dict)  # fields every record of the run has

    def applier(self) -> PlanApplier:
        return PlanApplier(self.blocks, self.variants)

    def scores(self, metric: str, settings: dict) -> tuple[Scores, dict, bool]:
        """(scores, score key, was_cached) of `metric` with `settings`, cached on disk."""
        entry = METRICS.get(metric)
        i = self.identity
        key = score_key(i.model, metric, settings, i.calibration, i.quant_config)

        def compute() -> Scores:
            calibration = self.calibration() if entry.needs_calibration else None
            extra = {"variants": self.variants} if entry.needs_quantizer else {}
            scores = entry.compute(self.model, self.blocks, calibration, **settings, **extra)
            store_scores(self.cache_dir, key, scores)
            return scores

        scores, made = computed_once(
            self.cache_dir / "claims",
            f"scores-{digest(key)}",
            lambda: load_cached(self.cache_dir, key),
            compute,
        )  # parallel jobs of a multirun compute each score once
        return scores, key, not made

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()


def open_context(run: RunConfig, *, evaluate: bool) -> RunContext:
    """Load what `run` needs; `evaluate` adds the suite, the record store and the tracker."""
    backend = make_backend(run.quant.name, **run.quant.settings)
    check_inputs(run, evaluate=evaluate)
    suite = make_suite(run) if evaluate else None  # bad tasks, missing data: before the model
    model, tokenizer, blocks, device = load(run)
    calibration = _calibration(run, tokenizer)
    calib_id = run.calib.identity()
    identity = Identity(
        model=run.model.identity(),
        calibration=calib_id,
        quant=quant_identity(
            backend.name, backend.settings(), calib_id if backend.calibrated else None
        ),
        quant_config=run.quant.as_config(),
        evaluation=None if suite is None else suite.identity(),
    )
    variants = make_variants(
        backend,
        lambda: BlockInputs.capture(model, blocks, calibration(), CAPTURE_BATCH),
        store=VariantStore(
            run.paths.cache / "variants", {"model": identity.model, "quant": identity.quant}
        ),
    )
    context = RunContext(
        model=model,
        tokenizer=tokenizer,
        blocks=blocks,
        device=device,
        backend=backend,
        variants=variants,
        sizes=SizeTable(model, blocks, backend),
        identity=identity,
        cache_dir=run.paths.cache,
        calibration=calibration,
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
            data_sha256=_data_digests(run, suite),
            weights_sha256=_weight_digests(run),
            weights_source=_weights_source(run),
        )
        context.tracker = _tracker(run)
    return context


def check_inputs(run: RunConfig, *, evaluate: bool) -> None:
    """The checks that read files but load nothing: the checkpoint's config.json against
    the run, and the data files the run will read. run.py calls this before Hydra starts
    (so bad input writes nothing), and every command again before loading."""
    path = resolve_model_path(run.model.path)
    check_against_checkpoint(run, read_checkpoint_facts(path, **hub_options(run)))
    wanted = source_files(run.calib.text, run.paths.data)
    if evaluate:
        spec = run.eval.spec
        include = Path(spec.include_path) if spec.include_path else None
        check_task_names(
            spec.tasks, source=spec.source, local=spec.local, include_path=include, index=load_index
        )
        wanted += source_files(spec.text, run.paths.data) if spec.text else []
        if spec.source == "local":
            built_in = [t for t in spec.tasks if t in FILES and t not in spec.local]
            wanted += [f for task in built_in for f in local_files(task, run.paths.data)]
    missing = [str(f) for f in wanted if not f.is_file()]
    if missing:
        raise LwqError(
            f"data file {missing[0]} not found; point to the data dir with paths.data=<dir> "
            "or the LWQ_DATA environment variable"
        )


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
    )


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


def hub_options(run: RunConfig) -> dict:
    m = run.model
    return {
        "trust_remote_code": m.trust_remote_code,
        "revision": m.revision,
        "gguf_file": m.gguf_file,
        "make": m.make,
    }


def _weights_options(run: RunConfig) -> dict:
    return hub_options(run) | {"allow_pickle": run.model.allow_pickle}


def check_against_checkpoint(run: RunConfig, facts: CheckpointFacts) -> None:
    """Windows within the model's context, block counts within its blocks: checked from its
    config.json, before the weights load (a too-long window would run for minutes first)."""
    if facts.context is not None:
        for key, value in (
            ("calib.seq_len", run.calib.seq_len),
            ("eval.max_length", run.eval.spec.max_length),
        ):
            if value > facts.context:
                raise LwqError(
                    f"{key}={value} is longer than {run.model.name}'s context of "
                    f"{facts.context} tokens; use {key}={facts.context} or less"
                )
    if facts.blocks is None:
        return
    too_many = [k for k in run.sweep.blocks or () if k > facts.blocks]
    if too_many:
        raise LwqError(
            f"sweep.blocks has {too_many}, outside 0..{facts.blocks} for {run.model.name}"
        )
    plan = run.manual_plan
    if plan is not None and len(plan.bits) != facts.blocks:
        raise LwqError(
            f"plan_file has {len(plan.bits)} blocks; {run.model.name} has {facts.blocks}"
        )


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


def _weight_digests(run: RunConfig) -> dict:
    """sha256 of each weight file of the checkpoint (local, or the hub's cached snapshot);
    of a GGUF model, of its one file."""
    files = weight_files(resolve_model_path(run.model.path))
    if run.model.gguf_file:
        files = [f for f in files if f.name == run.model.gguf_file]
    base = files[0].parent if files else None
    return files_sha256(files, run.paths.cache / "sha256.json", base=base)


def _weights_source(run: RunConfig) -> dict | None:
    """Where the weights came from when they were not full precision: a GGUF file loaded
    directly, or the GGUF a local checkpoint was converted from (its types, e.g. Q4_1)."""
    path = Path(resolve_model_path(run.model.path))
    if run.model.gguf_file and (path / run.model.gguf_file).is_file():
        return gguf.describe(path / run.model.gguf_file, with_sha256=False)
    return gguf.read_source(path) if path.is_dir() else None


def _data_digests(run: RunConfig, suite: Suite) -> dict:
    """sha256 of every data file the run reads (evaluation and calibration), named relative
    to the data directory; the stdlib corpus, which is no data file, by its documents."""
    data = run.paths.data
    files = [*suite.data_files(), *source_files(run.calib.text, data)]
    digests = files_sha256(files, run.paths.cache / "sha256.json", base=data)
    for source in {run.calib.text, run.eval.spec.text} - {None}:
        if source.startswith("ref-"):
            digests[source] = texts_sha256(load_texts(source, data))
    return digests


def _tracker(run: RunConfig):
    tracking = run.tracking
    if tracking.name == "none":
        return make_tracker("none")
    name = f"{run.model.name}-{run.metric.name}-{run.baseline}-{time.strftime('%H%M%S')}"
    return make_tracker(
        tracking.name,
        project=tracking.project,
        name=name,
        config=run.plain,
        mode=tracking.mode,
        dir=run.paths.results,
    )
