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
from lwq.modeling.blocks import find_blocks
from lwq.modeling.load import (
    CheckpointFacts,
    checkpoint_config,
    config_from_shape,
    meta_model,
    read_checkpoint_facts,
)
from lwq.runtime import DTYPES, pick_device, resolve_model_path


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
    check_calibration_memory(run)
    check_budget_shapes(run)


def model_config(run: RunConfig):
    """(the model's config, where it came from): its config.json, read without weights,
    or the shapes in conf/model/<name>.yaml; the network is never asked."""
    path = resolve_model_path(run.model.path)
    m = run.model
    config = checkpoint_config(
        path, trust_remote_code=m.trust_remote_code, revision=m.revision, gguf_file=m.gguf_file
    )
    if config is not None:
        return config, f"config.json of {path}"
    if run.model.shape is None:
        raise LwqError(
            f"dry run: {run.model.path}'s config.json cannot be read here and "
            f"conf/model/{run.model.name}.yaml gives no shapes; add them or go online"
        )
    return config_from_shape(run.model.shape), f"the shapes in conf/model/{run.model.name}.yaml"


def calibration_bytes(run: RunConfig, blocks, hidden: int) -> dict[str, int] | None:
    """A window backend's (slider's) calibration memory by part, every block at
    `sweep.low` (the most it holds); None for backends that do not state one."""
    backend = run.quant.backend
    if not hasattr(backend, "calibration_bytes"):
        return None
    # `auto` is bfloat16 on CUDA, float32 on a CPU
    device = pick_device(run.device)
    if run.model.dtype == "auto":
        dtype_bytes = 2 if device.type == "cuda" else 4
    else:
        dtype_bytes = DTYPES[run.model.dtype].itemsize
    bits = (run.sweep.low,) * len(blocks)
    return backend.calibration_bytes(
        blocks, bits, run.calib.samples, run.calib.seq_len, hidden, dtype_bytes
    )


def check_budget_shapes(run: RunConfig) -> None:
    """Refuse, before any weight loads, a budget no plan of `allowed_bits` meets on this
    model's shapes (lwq.commands.budget.check_budget: the arithmetic in the line), ties
    that name no linears of it, and a plan file whose mixed blocks miscount its linears."""
    budget = run.budget
    in_files = budget.wanted and (budget.bytes is not None or budget.format is not None)
    fine = budget.wanted and budget.unit != "block"
    mixed = run.manual_plan is not None and run.manual_plan.mixed
    if not (in_files or fine or mixed):
        return
    try:
        config, _ = model_config(run)
    except LwqError:
        return  # no shapes here: loading will say what is missing
    from lwq.commands.budget import budget_units, check_budget
    from lwq.quant.cost import SizeTable

    model = meta_model(config)
    sizes = SizeTable(model, find_blocks(model), run.quant.backend)
    if budget.wanted:
        check_budget(run, sizes)
        budget_units(run, sizes)
    if mixed and len(run.manual_plan.bits) == len(sizes):
        for i, names in enumerate(sizes.linear_names):
            try:
                run.manual_plan.widths(i, len(names))
            except LwqError as err:
                raise LwqError(f"plan_file: {err} ({', '.join(names)})") from err


def check_calibration_memory(run: RunConfig) -> None:
    """Refuse, before any weight loads, a window calibration that cannot fit its device."""
    if not hasattr(run.quant.backend, "calibration_bytes"):
        return
    try:
        config, _ = model_config(run)
    except LwqError:
        return  # no shapes here: loading will say what is missing
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    needed = calibration_bytes(run, find_blocks(meta_model(config)), text.hidden_size)
    device = pick_device(run.device)
    from lwq.quant.slider import check_fits

    check_fits(needed, _free_bytes(device), str(device))


def _free_bytes(device) -> int:
    """Free memory of `device`: the GPU's, or the host's MemAvailable."""
    if device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62  # not Linux: nothing to check against


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
