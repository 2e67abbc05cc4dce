"""`dry_run=true`: what a sweep would do, without loading a single weight.

The model is built on the meta device from its config.json (a local directory's, or a
hub id's in the local Hugging Face cache; the network is never asked) or, where neither is
there (a hub model on a laptop), from the shapes in conf/model/<name>.yaml. Every point
is planned as the sweep would plan it, with the exact
weight bytes and bits per weight of the chosen backend (sizes are computed from shapes, as
in every record), which points are already recorded, a peak-memory estimate and, where
earlier records of the model exist, a time estimate. A 13B multirun is checked in seconds.

An ordering whose scores are not cached yet has no ranking: its plans are shown with
blocks in index order, which gives the exact bytes when every block has the same shapes
(as in every paper model) and is marked otherwise.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass

from lwq.commands.budget import budget_units, check_budget
from lwq.commands.budget import describe as describe_budget
from lwq.commands.identity import run_identity
from lwq.commands.points import Point, plan_points
from lwq.commands.preflight import calibration_bytes, check_against_checkpoint, model_config
from lwq.commands.score_source import cached_only
from lwq.config import RunConfig
from lwq.data import chunk_documents, load_texts, seeded_subset
from lwq.errors import LwqError
from lwq.modeling.blocks import find_blocks
from lwq.modeling.load import (
    CheckpointFacts,
    meta_model,
)
from lwq.quant.base import BLOCK
from lwq.quant.cost import SizeTable
from lwq.quant.engine import keep_stride
from lwq.results.store import RecordStore
from lwq.runtime import DTYPES
from lwq.units import tied_labels

GB = 1e9
FLOAT32 = 4


@dataclass(frozen=True)
class PlannedPoint:
    point: Point
    weight_bytes: int
    bits_per_weight: float | None
    avg_bits: float  # nominal (a mixed block counts its weight-weighted mean width)
    recorded: bool
    ranked: bool  # False: the ordering's scores are not cached; blocks in index order


def run_dry(run: RunConfig) -> dict:
    """Print the sweep's points, sizes, memory and time estimates; return them as data."""
    config, source = model_config(run)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    check_against_checkpoint(
        run, CheckpointFacts(text.num_hidden_layers, getattr(text, "max_position_embeddings", None))
    )
    model = meta_model(config)
    blocks = find_blocks(model)
    backend = run.quant.backend
    sizes = SizeTable(model, blocks, backend)
    check_budget(run, sizes)
    identity = run_identity(run, backend, run.eval.spec.identity())
    store = RecordStore(run.paths.results / run.model.name / "records.jsonl")
    done = store.done_keys()
    points = plan_points(run, identity, sizes, cached_only(run.paths.cache, identity))
    planned = [_sized(p, sizes, done) for p in points]
    estimate = _estimates(run, config, sizes, store, planned)
    estimate["calibration"] = calibration_bytes(run, blocks, text.hidden_size)
    alike = len({sizes.block_bytes(i, b) for i in range(len(sizes)) for b in (16,)}) == 1
    _print(run, source, len(blocks), planned, estimate, alike)
    if run.budget.wanted:
        allocated = next((p.point for p in planned if p.point.kind == "allocated"), None)
        print(describe_budget(run, sizes, None if allocated is None else allocated.plan.bits))
        units, widths = budget_units(run, sizes), len(run.budget.allowed_bits)
        ties = tied_labels(units)
        print(
            f"allocation units: {len(units)} ({run.budget.unit}"
            + (f", tied {', '.join(ties)}" if ties else "")
            + f") x {widths} widths = {len(units) * widths} single-unit KL measurements in "
            "its sensitivity table, each from its block on"
        )
        if backend.unit == BLOCK and run.budget.unit != "block":
            print(_kept_inputs_line(run, text.hidden_size, len(blocks)))
    return {"blocks": len(blocks), "source": source, "points": planned, **estimate}


def _kept_inputs_line(run: RunConfig, hidden: int, n_blocks: int) -> str:
    """What the full-precision block inputs of mixed-width blocks cost (lwq.quant.engine
    keeps them within eval.reuse_memory): the calibration tokens' hidden states, in the
    dtype the memory line assumes (`auto`: bfloat16, as on CUDA; twice on a CPU)."""
    auto = run.model.dtype == "auto"
    dtype = "bfloat16" if auto else run.model.dtype
    per_block = run.calib.samples * run.calib.seq_len * hidden * DTYPES[dtype].itemsize
    stride = keep_stride(n_blocks, per_block, int((run.eval.reuse_memory or 0) * GB))
    return (
        f"mixed-width blocks (quant={run.quant.name}): one block's full-precision inputs are "
        f"{per_block / 1e6:.0f} MB ({run.calib.samples} x {run.calib.seq_len} x {hidden} "
        f"{dtype}); eval.reuse_memory={run.eval.reuse_memory or 0:g} GB keeps "
        f"{len(range(stride, n_blocks, stride))} of {n_blocks - 1}, so a walk to one starts "
        "at the nearest"
    )


def _sized(point: Point, sizes: SizeTable, done: set[str]) -> PlannedPoint:
    cost = sizes.cost(point.plan, point.removed)
    bits = None if point.kind == "reference" else cost.bits_per_weight
    return PlannedPoint(
        point, cost.weight_bytes, bits, cost.avg_bits, point.key in done, point.ranked
    )


def _estimates(run, config, sizes: SizeTable, store, planned) -> dict:
    """Peak memory of the evaluation (weights + the largest transient) and the host memory
    of kept originals; the time from earlier records of the model, if any."""
    # `auto` is bfloat16 on CUDA, the machine a paper model runs on; float32 on a CPU
    dtype_bytes = 2 if run.model.dtype == "auto" else DTYPES[run.model.dtype].itemsize
    params = sizes.fixed_bytes() // 2 + sum(
        sizes.block_bytes(i, 16) // 2 for i in range(len(sizes))
    )
    batch, window = run.eval.batch_size, run.eval.spec.max_length
    hidden = config.hidden_size
    vocab = config.vocab_size
    heads = config.num_attention_heads
    inter = getattr(config, "intermediate_size", 4 * hidden)
    logits = _logits_bytes(run.eval, batch, window, vocab)
    attention = batch * heads * window * window * dtype_bytes
    mlp = 3 * batch * window * inter * dtype_bytes
    block_params = sum(sizes.block_bytes(i, 16) // 2 for i in range(len(sizes)))
    todo = [p for p in planned if not p.recorded]
    earlier = [r for r in store.scan().records if r.get("status", "ok") == "ok"]
    seconds = [r["seconds"] + r.get("quantize_seconds", 0) for r in earlier if "seconds" in r]
    return {
        "boundary_gb": _boundary_bytes(run, hidden, dtype_bytes) / GB,
        "sensitivity_gb": _sensitivity_bytes(run, hidden, vocab, dtype_bytes) / GB,
        "weights_gb": params * dtype_bytes / GB,
        "peak_gb": (params * dtype_bytes + max(logits, attention + mlp)) / GB,
        "kept_originals_gb": block_params * dtype_bytes / GB,
        "to_evaluate": len(todo),
        "seconds_estimate": statistics.median(seconds) * len(todo) if seconds else None,
        "estimated_from": len(seconds),
    }


def _print(run, source, n_blocks, planned, estimate, alike: bool) -> None:
    print(
        f"dry run: model={run.model.name} ({n_blocks} blocks, from {source}) "
        f"metric={run.metric.name} quant={run.quant.name} {run.sweep.high}->{run.sweep.low} "
        f"baseline={run.baseline} eval={run.eval.spec.name}"
    )
    rows = [("point", "k", "avg bits", "bits/w", "weights", "recorded", "plan")]
    for p in planned:
        point = p.point
        unranked = "(not scored yet: " + ("bytes exact, blocks alike)" if alike else "bytes vary)")
        plan = "".join(_bit(b) for b in point.plan.bits) if p.ranked else unranked
        rows.append(
            (
                point.label,
                "-" if point.k is None else str(point.k),
                f"{p.avg_bits:.3f}",
                "-" if p.bits_per_weight is None else f"{p.bits_per_weight:.3f}",
                _size(p.weight_bytes),
                "yes" if p.recorded else "no",
                plan,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    e = estimate
    dtype = "bfloat16 (dtype=auto on CUDA; twice on a CPU)" if run.model.dtype == "auto" else ""
    print(
        f"memory (estimate, {dtype or run.model.dtype}): weights {e['weights_gb']:.2f} GB, "
        f"evaluation peak {e['peak_gb']:.2f} GB at batch {run.eval.batch_size} x "
        f"{run.eval.spec.max_length} tokens; kept original blocks up to "
        f"{e['kept_originals_gb']:.2f} GB "
        + (
            "in scratch files under paths.cache (originals=disk; one block's in memory at a time)"
            if run.originals == "disk"
            else "on the host (originals=host)"
        )
    )
    if e["calibration"]:
        parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in e["calibration"].items())
        print(
            f"calibration (quant={run.quant.name}, every block at {run.sweep.low} bits): "
            f"{sum(e['calibration'].values()) / 2**30:.1f} GiB besides the loaded model "
            f"({parts} GiB; calib {run.calib.samples} x {run.calib.seq_len})"
        )
    if run.eval.reuse_memory and e["boundary_gb"]:
        print(
            f"prefix reuse: one block boundary of the held-out passes keeps ~"
            f"{e['boundary_gb'] * 1e3:.0f} MB (held-out tokens estimated at 4 characters "
            f"each); eval.reuse_memory={run.eval.reuse_memory:g} GB holds "
            f"{int(run.eval.reuse_memory / e['boundary_gb'])} of them"
        )
    if e["sensitivity_gb"]:
        print(
            f"sensitivity table: {e['sensitivity_gb']:.2f} GB besides the weights "
            f"({run.calib.samples} x {run.calib.seq_len} calibration tokens: the block inputs "
            "and, per token, the width-sized vector the KL needs)"
        )
    if e["seconds_estimate"] is None:
        print(f"time: {e['to_evaluate']} points to evaluate; no earlier records to estimate from")
    else:
        print(
            f"time (estimate): {e['to_evaluate']} points to evaluate, about "
            f"{e['seconds_estimate'] / 60:.1f} min (median of {e['estimated_from']} earlier points)"
        )


def _logits_bytes(eval_config, batch: int, window: int, vocab: int) -> int:
    """The largest float32 log-probabilities of the evaluation: under a bound, lwq's
    chunks, lm-eval's rows (lm_eval_internals.rows_within) or, when one row does not fit,
    lwq's answers to lm-eval's requests (lwq.evaluation.bounded_requests) all stay in it."""
    if eval_config.logits_memory is None:
        return 2 * batch * window * vocab * FLOAT32  # logits and their log-softmax
    return int(eval_config.logits_memory * GB)


def _boundary_bytes(run, hidden: int, dtype_bytes: int) -> int:
    """The hidden states entering one block for every held-out token (prefix reuse)."""
    spec = run.eval.spec
    if not spec.text:
        return 0
    try:
        pieces = seeded_subset(
            chunk_documents(load_texts(spec.text, run.paths.data), spec.chunk_chars),
            spec.limit,
            spec.seed,
        )
    except (LwqError, OSError):
        return 0  # the text is not here (the sweep itself will say so)
    tokens = sum(len(p) for p in pieces) // 4
    return tokens * hidden * dtype_bytes


def _sensitivity_bytes(run, hidden: int, vocab: int, dtype_bytes: int) -> int:
    """What a sensitivity table holds besides the weights, when the run measures one: the
    inputs entering a block (model dtype) and per token u (float32) and two float64s, plus
    one chunk of log-probabilities (lwq.metrics.sensitivity)."""
    measured = run.metric.name == "sensitivity" or (
        run.budget.avg_bits is not None or run.budget.bytes is not None
    )
    if not measured:
        return 0
    tokens = run.calib.samples * run.calib.seq_len
    per_token = hidden * dtype_bytes + hidden * FLOAT32 + 16
    chunk = int((run.eval.logits_memory or 0) * GB) or 2 * 8 * run.calib.seq_len * vocab * 4
    return tokens * per_token + chunk


def _size(n_bytes: int) -> str:
    return f"{n_bytes / GB:.3f} GB" if n_bytes >= GB else f"{n_bytes / 1e6:.3f} MB"


def _bit(bits) -> str:
    """One character per block: its bits in hex (16 = '-', left as loaded; 'm' = linears
    at mixed widths)."""
    if isinstance(bits, tuple):
        return "m"
    return "-" if bits == 16 else format(bits, "x")


# hydra-submitit-launcher's BaseQueueConf: given to submitit by these names, every other
# key of hydra.launcher with the executor's prefix (slurm_partition, slurm_signal_delay_s)
_BASE_QUEUE_KEYS = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb",
                    "nodes", "name", "stderr_to_stdout"}  # fmt: skip


def sbatch_settings(launcher: dict, jobs: int) -> list[str]:
    """The `#SBATCH` lines (and any setup lines before srun) submitit writes for `jobs` jobs
    through the SLURM launcher configured by `launcher` (hydra.launcher as plain data), made
    by submitit's own executor as hydra-submitit-launcher calls it; log paths left out."""
    import submitit

    params = {k: v for k, v in launcher.items() if k not in ("_target_", "submitit_folder")}
    init = {"slurm_max_num_timeout": params.pop("max_num_timeout")}
    with tempfile.TemporaryDirectory() as folder:
        executor = submitit.AutoExecutor(cluster="slurm", folder=folder, **init)
        executor.update_parameters(
            **{k if k in _BASE_QUEUE_KEYS else f"slurm_{k}": v for k, v in params.items()}
        )
        slurm = executor._executor  # noqa: SLF001 - the text submitit itself would submit
        if jobs > 1:
            slurm.parameters["map_count"] = jobs  # map_array: one job array
        text = slurm._make_submission_file_text("run.py", "dry-run")  # noqa: SLF001
    head, _, tail = text.partition("# command")
    settings = [line for line in head.splitlines() if line.startswith("#SBATCH")]
    settings = [s for s in settings if not s.startswith(("#SBATCH --output", "#SBATCH --error"))]
    setup = head.split("# setup", 1)[1].strip().splitlines() if "# setup" in head else []
    return settings + [f"(setup) {line}" for line in setup if line.strip()]


def print_sbatch(launcher: dict, jobs: int) -> None:
    """What a multirun through hydra/launcher=slurm would submit (the dry run prints it)."""
    print(f"sbatch settings of the {jobs} job{'s' if jobs > 1 else ''} (hydra/launcher=slurm):")
    for line in sbatch_settings(launcher, jobs):
        print(f"  {line}")
    print(
        f"  requeue: SLURM's (pre-emption, scontrol requeue); submitit requeues a job on its "
        f"--signal up to {launcher.get('max_num_timeout')} times (USR2 "
        f"{launcher.get('signal_delay_s')} s before the time limit, or on pre-emption)"
    )
