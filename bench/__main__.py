"""`make bench` (`python -m bench`): time the default sweep and the quick eval suite;
write bench/results.json.

Sections (`--section`, default all): `default_sweep` runs `python run.py` end to end;
`quick_suite` times one point of `eval=quick` on the reference model, lm-eval's
`simple_evaluate` per point (how lwq evaluated before: tasks rebuilt, requests
re-rendered, environment collected at every call) against `Suite.evaluate` (tasks,
requests and tokens prepared once), and scans the batch size; `backends` times
quantizing every block with each backend and width, and the forward speed after it
(bench/backends.py); `pipeline` runs six points in process and as the hand-written
pipeline (a fresh process per point: load, quantize, save, `lm_eval` command line;
bench/pipeline.py); `roofline` sets a point's evaluation FLOP rate against torch matmul on
the model's own shapes (bench/roofline.py); `stages` times each stage of a sweep on copies
of the model with 8, 16 and 32 blocks, and `memory` a sweep's peak RSS against the model's
size (bench/stages.py). A section run alone replaces only its own entry in the results
file (the per-model sections: only the benchmarked model's).

Speed is shown here, never by timed assertions in tests. Run it alone on the machine:
torch threads of two busy processes slow each other down by several times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench.backends import bench_backends
from bench.evaluation import bench_eval_modes, bench_kl_bound
from bench.pipeline import bench_pipeline
from bench.reuse import bench_reuse
from bench.roofline import bench_roofline
from bench.stages import bench_memory, bench_stages, merge_stages
from bench.table import summary_lines
from lwq.commands.context import load, make_suite
from lwq.commands.sweep import run_sweep
from lwq.config import compose_run
from lwq.runtime import PROJECT_ROOT

SECTIONS = (
    "default_sweep",
    "quick_suite",
    "backends",
    "evaluation",
    "pipeline",
    "roofline",
    "stages",
    "memory",
    "reuse",
)
PER_MODEL = {
    "pipeline": bench_pipeline,
    "roofline": bench_roofline,
    "stages": bench_stages,
    "memory": bench_memory,
    "reuse": bench_reuse,
}


def bench_default_sweep(overrides: list[str]) -> dict:
    """Run the default sweep into a scratch results dir; summarise where the time went."""
    with tempfile.TemporaryDirectory() as scratch:
        cfg = compose_run(*[f"paths.results={scratch}", "tracking=none", *overrides])
        started = time.time()
        records = run_sweep(cfg)
        total = time.time() - started
    points = [r for r in records if r["kind"] == "quantized"]
    evals = [r["seconds"] for r in records]
    return {
        "what": "default sweep (python run.py), cold caches",
        "overrides": overrides,
        "total_seconds": round(total, 1),
        "points": len(points),
        "evaluations": len(records),
        "eval_seconds_mean": round(sum(evals) / len(evals), 2),
        "quantize_seconds_mean": round(sum(r["quantize_seconds"] for r in points) / len(points), 3),
        "setup_seconds": round(total - sum(evals) - sum(r["quantize_seconds"] for r in points), 1),
    }


def bench_quick_suite(overrides: list[str], repeats: int = 5) -> dict:
    """Seconds per point of `eval=quick`, before (simple_evaluate) and after (Suite.evaluate).

    The two are interleaved (before, after, before, ...) so that load from other
    processes on the machine hits both alike.
    """
    with tempfile.TemporaryDirectory() as scratch:
        cfg_overrides = [f"paths.results={scratch}", "tracking=none", "eval=quick", *overrides]
        cfg = compose_run(*cfg_overrides)
        model, tokenizer, _, _ = load(cfg)
        started = time.time()
        suite = make_suite(cfg)
        prepare = time.time() - started
        suite.evaluate(model, tokenizer)  # warm-up: the first call renders the requests
        before, after = [], []
        for _ in range(repeats):
            before.append(_timed(_simple_evaluate_point, suite, model, tokenizer))
            after.append(_timed(suite.evaluate, model, tokenizer))
        scan = {}
        for batch_size in (4, 8, 16):
            suite_b = make_suite(compose_run(*[*cfg_overrides, f"eval.batch_size={batch_size}"]))
            suite_b.evaluate(model, tokenizer)
            scan[batch_size] = _stats([_timed(suite_b.evaluate, model, tokenizer) for _ in "ab"])
    return {
        "what": "one point of eval=quick (WikiText-2 ppl, ARC-Easy, PIQA) on the reference model",
        "overrides": overrides,
        "items": suite.harness.items(),
        "batch_size": cfg.eval.batch_size,
        "prepare_seconds_once": round(prepare, 2),
        "before_simple_evaluate": _stats(before),
        "after_suite_evaluate": _stats(after),
        "saved_seconds_median": round(_stats(before)["median"] - _stats(after)["median"], 2),
        "max_relative_difference": _max_relative_difference(before[-1][1], after[-1][1]),
        "after_seconds_by_batch_size": scan,
    }


def _simple_evaluate_point(suite, model, tokenizer) -> dict:
    """One point the way lwq evaluated before: HFLM and lm_eval.simple_evaluate per call."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    harness = suite.harness
    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=harness.batch_size,
        max_length=harness.max_length,
    )
    names = [task.name for task in harness.tasks]
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=names,
        task_manager=TaskManager(include_path=str(harness.workdir), include_defaults=False),
        bootstrap_iters=harness.bootstrap_iters,
        log_samples=False,
        random_seed=None,
        numpy_random_seed=None,
        torch_random_seed=None,
    )
    return {name: _numbers(out["results"][name]) for name in names}


def _max_relative_difference(before: dict, after: dict) -> float:
    """Largest |after / before - 1| over every metric both runs report (0 = identical)."""
    pairs = [
        (value, after["tasks"][task][metric])
        for task, metrics in before.items()
        for metric, value in metrics.items()
        if metric in after["tasks"][task]
    ]
    return max(abs(a / b - 1) if b else abs(a) for b, a in pairs)


def _numbers(result: dict) -> dict:
    return {k.removesuffix(",none"): v for k, v in result.items() if "," in k and v != "N/A"}


def _timed(run, *args) -> tuple[float, object]:
    """(wall seconds, result) of one call."""
    started = time.time()
    value = run(*args)
    return round(time.time() - started, 2), value


def _stats(timed: list[tuple[float, object]]) -> dict:
    seconds = sorted(t for t, _ in timed)
    return {"min": seconds[0], "median": seconds[len(seconds) // 2], "all": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results.json")
    parser.add_argument("--section", choices=[*SECTIONS, "all"], default="all")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the benchmarked runs")
    args = parser.parse_args(argv)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result |= {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
    }
    if args.section in ("default_sweep", "all"):
        result["default_sweep"] = bench_default_sweep(args.overrides)
    if args.section in ("quick_suite", "all"):
        result["quick_suite"] = bench_quick_suite(args.overrides)
    if args.section in ("evaluation", "all"):
        result["evaluation"] = {
            "modes": bench_eval_modes(args.overrides),
            "kl_bound": bench_kl_bound(args.overrides),
        }
    for section, bench in PER_MODEL.items():  # kept per model: ref-tiny and smollm2-135m
        if args.section in (section, "all"):
            measured = bench(args.overrides)
            kept = result.get(section) if isinstance(result.get(section), dict) else {}
            if section == "stages":  # a quant= run measures some backends only
                measured = merge_stages(kept.get(measured["model"]), measured)
            result[section] = kept | {measured["model"]: measured}
    if args.section in ("backends", "all"):
        result["backends"] = bench_backends(compose_run(*["tracking=none", *args.overrides]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join([f"written: {args.out}", *summary_lines(result)]))


if __name__ == "__main__":
    main()
