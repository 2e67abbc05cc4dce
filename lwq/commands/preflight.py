"""The checks that read files but load nothing: the checkpoint's config.json against the
run, and the data files the run will read. run.py calls `check_inputs` before Hydra
starts (so bad input writes nothing), and every command again before loading; each
refusal is one LwqError line that names the fix."""

from __future__ import annotations

from pathlib import Path

from lwq.config import RunConfig
from lwq.data import source_files
from lwq.errors import LwqError
from lwq.evaluation.index import load_index
from lwq.evaluation.local_data import FILES, local_files
from lwq.evaluation.tasks import check_task_names
from lwq.modeling.load import CheckpointFacts, read_checkpoint_facts
from lwq.runtime import resolve_model_path


def check_inputs(run: RunConfig, *, evaluate: bool) -> None:
    """Refuse bad input from files alone: the checkpoint's facts, task names, data files."""
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


def hub_options(run: RunConfig) -> dict:
    m = run.model
    return {
        "trust_remote_code": m.trust_remote_code,
        "revision": m.revision,
        "gguf_file": m.gguf_file,
        "make": m.make,
    }


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
