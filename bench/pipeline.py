"""lwq's in-process sweep against the pipeline researchers write by hand (`make bench`,
section `pipeline`).

The same six points (one metric, RTN, perplexity on a fixed subset of the held-out text)
two ways: `run_sweep` in one process, and for each point a fresh process
(`bench/naive_point.py`) that loads the model, quantizes every block, saves the
checkpoint and runs the `lm_eval` command line on it with the same task files. Both
wall times, their ratio, and the largest relative difference of the perplexities.

Overhead: the in-process sweep's time against the pure forward passes of its
evaluations, measured by a bare loop over the same token windows (`bare_forward_seconds`)
times the number of evaluations; split into the evaluations themselves and what a sweep
pays once (`overhead_parts`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lwq.commands.context import load, make_suite
from lwq.commands.sweep import run_sweep
from lwq.config import compose_run
from lwq.evaluation.perplexity import token_windows
from lwq.evaluation.suite import text_task_name
from lwq.modeling.capture import BlockInputs
from lwq.quant import make_backend
from lwq.quant.engine import quantize_block
from lwq.runtime import PROJECT_ROOT, resolve_model_path

FRACTIONS = "[0,0.2,0.4,0.6,0.8,1]"
AGREE = 1e-4  # relative: the same forward passes, batched alike; float32 sums differ little
METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def bench_pipeline(overrides: list[str], fractions: str = FRACTIONS) -> dict:
    """Seconds of both ways over the same points, their ratio, and their agreement."""
    with tempfile.TemporaryDirectory() as scratch:
        run = compose_run(
            f"paths.results={scratch}",
            "tracking=none",
            f"sweep.fractions={fractions}",
            "eval.kl=false",  # the naive pipeline has no KL reference
            "eval.cross_check=none",
            *overrides,
        )
        if run.quant.name not in ("rtn", "gptq"):
            raise SystemExit("the pipeline bench compares RTN or GPTQ sweeps")
        if run.quant.name == "gptq":
            warm_gptq_kernels(run.quant.settings)
        started = time.time()
        records = run_sweep(run)
        in_process = time.time() - started
        points = [r for r in records if r["kind"] == "quantized"]
        spec = run.eval.spec
        task = text_task_name(spec.name, spec.text)
        tasks_dir = run.paths.cache / "tasks" / spec.digest()
        bare = bare_forward_seconds(run)
        naive, differences = [], []
        for i, record in enumerate(points):
            started = time.time()
            metrics = naive_point(
                run, record["plan"], tasks_dir=tasks_dir, task=task, work=Path(scratch) / str(i)
            )
            naive.append(round(time.time() - started, 2))
            ours = record["eval"]["tasks"][task]
            differences += [abs(metrics[m] / ours[m] - 1) for m in METRICS]
    gptq = run.quant.name == "gptq"
    return {
        "what": f"the same {run.quant.name.upper()} sweep in process (run.py) and as one fresh "
        "process per point (load, "
        + ("calibrate and GPTQ every block" if gptq else "quantize")
        + ", save, lm_eval command line), cold caches on both sides",
        "command": "python -m bench --section pipeline " + " ".join(overrides),
        "model": run.model.name + (" gptq" if gptq else ""),
        "points": len(points),
        "in_process_seconds": round(in_process, 1),
        "in_process_includes": "the reference point and the scores, besides the points",
        "naive_seconds": round(sum(naive), 1),
        "naive_seconds_per_point": naive,
        "speedup": round(sum(naive) / in_process, 2),
        "evaluations": len(records),
        "bare_forward_seconds_per_evaluation": round(bare, 2),
        "overhead_over_bare_forwards": round(in_process / (len(records) * bare) - 1, 3),
        **overhead_parts(records, in_process, bare),
        "max_relative_difference": max(differences),
        "agree_within": AGREE,
        "agree": max(differences) <= AGREE,
    }


def overhead_parts(records: list[dict], in_process: float, bare: float) -> dict:
    """The sweep's time split into its evaluations (each point's quantization and
    evaluation, from the records) and the rest, paid once a sweep (model load, block scores,
    task preparation, records): the first is set against the bare forwards it repeats."""
    points = sum(r["seconds"] + r.get("quantize_seconds", 0.0) for r in records)
    return {
        "evaluations_seconds": round(points, 1),
        "once_a_sweep_seconds": round(in_process - points, 1),
        "evaluations_over_bare_forwards": round(points / (len(records) * bare) - 1, 3),
    }


def warm_gptq_kernels(settings: dict) -> None:
    """Build one small layer first: gptqmodel compiles its CPU packing extension (~30 s)
    and its kernels on first use and keeps them on disk, so whichever side ran first on a
    fresh machine would pay for both; a researcher's machine pays it once, not per sweep."""
    block = torch.nn.Sequential(torch.nn.Linear(128, 128))
    inputs = BlockInputs([torch.randn(1, 16, 128)], [[{}]])
    quantize_block(block, make_backend("gptq", **settings), 4, inputs, packed=False)


def naive_point(run, plan: list[int], *, tasks_dir: Path, task: str, work: Path) -> dict:
    """One point through bench/naive_point.py in a fresh interpreter: its lm-eval metrics."""
    command = [
        sys.executable,
        "-m",
        "bench.naive_point",
        "--model",
        str(resolve_model_path(run.model.path)),
        "--plan",
        json.dumps(plan),
        "--group-size",
        str(run.quant.settings["group_size"]),
        "--tasks-dir",
        str(tasks_dir),
        "--task",
        task,
        "--batch-size",
        str(run.eval.batch_size),
        "--max-length",
        str(run.eval.spec.max_length),
        "--work",
        str(work),
    ]
    if run.quant.name == "gptq":
        calib = run.calib
        command += [
            "--gptq",
            json.dumps(run.quant.settings),
            "--calib",
            json.dumps(
                {
                    "text": calib.text,
                    "data": str(run.paths.data),
                    "samples": calib.samples,
                    "seq_len": calib.seq_len,
                    "seed": calib.seed,
                }
            ),
        ]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@torch.no_grad()
def bare_forward_seconds(run) -> float:
    """Seconds of the forward passes alone over one evaluation's token windows, batched as
    the evaluation batches them, on the model as loaded: the floor of an evaluation."""
    model, tokenizer, _, device = load(run)
    return timed_forwards(model, eval_batches(run, model, tokenizer, make_suite(run), device))


@torch.no_grad()
def timed_forwards(model, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Seconds of one forward pass over every batch, after one warm-up pass."""
    model(input_ids=batches[0][0], attention_mask=batches[0][1])
    device = batches[0][0].device
    sync_device(device)
    started = time.perf_counter()
    for ids, mask in batches:
        model(input_ids=ids, attention_mask=mask)
    sync_device(device)
    return time.perf_counter() - started


def sync_device(device) -> None:
    """Wait for queued CUDA work, so a timer reads finished work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def eval_batches(run, model, tokenizer, suite, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input ids, attention mask) batches of the suite's held-out windows, padded on the
    right, `eval.batch_size` windows each: what one evaluation feeds the model."""
    windows = token_windows(tokenizer, suite.texts, run.eval.spec.max_length)
    size = run.eval.batch_size
    batches = []
    for start in range(0, len(windows), size):
        inputs = [w[0] for w in windows[start : start + size]]
        width = max(len(x) for x in inputs)
        ids = torch.zeros(len(inputs), width, dtype=torch.long)
        mask = torch.zeros(len(inputs), width, dtype=torch.long)
        for row, x in enumerate(inputs):
            ids[row, : len(x)] = torch.tensor(x)
            mask[row, : len(x)] = 1
        batches.append((ids.to(device), mask.to(device)))
    return batches
