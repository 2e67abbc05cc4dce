"""Where a sweep's time goes and how each stage grows with depth (`make bench`, section
`stages`), and its peak memory against the model's own size (section `memory`).

Stages of one sweep, timed around lwq's own steps (the recipe of lwq.commands.sweep):
loading (checkpoint, calibration, suite), scores (the ordering's metric), the KL reference
(the unquantized model's top-k distributions on the held-out text, once a sweep while not
cached), quantization (every point's `quantize_seconds`: installing its plan, GPTQ blocks
built on first use), evaluation (every point's `seconds`) and bookkeeping (the rest of the
point loop: claims, record writing, restoring blocks). Depth: copies of the model with 8,
16 and 32 blocks of the same width, the real blocks repeated in order, so activations stay
realistic.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lwq.commands.context import load, open_context
from lwq.commands.evaluate import evaluate_points
from lwq.commands.points import plan_points
from lwq.commands.stopping import StopSignals
from lwq.config import compose_run
from lwq.runtime import PROJECT_ROOT

DEPTHS = (8, 16, 32)
BACKENDS = ("rtn", "gptq")
POINTS = "[0,0.5,1]"  # the all-high, the half and the all-low plan: every block quantized


def sweep_stages(overrides: list[str]) -> dict:
    """Seconds of each stage of one sweep in a fresh results dir (no caches)."""
    with tempfile.TemporaryDirectory() as scratch:
        run = compose_run(f"paths.results={scratch}", "tracking=none", *overrides)
        started = time.perf_counter()
        ctx = open_context(run, evaluate=True)
        loaded = time.perf_counter()
        points = plan_points(run, ctx.identity, ctx.sizes, ctx.score_source())
        scored = time.perf_counter()
        if ctx.kl_cache is not None:  # else evaluate_points does it, inside "bookkeeping"
            ctx.suite.prepare_reference(ctx.model, ctx.tokenizer, ctx.kl_cache)
        referenced = time.perf_counter()
        with StopSignals() as stop:
            written, failed = evaluate_points(
                ctx, points, stop, high=run.sweep.high, low=run.sweep.low
            )
        ended = time.perf_counter()
    if failed:
        raise SystemExit(f"stages bench: {len(failed)} points failed: {failed[0].get('error')}")
    quantize = sum(r.get("quantize_seconds", 0.0) for r in written)
    evaluate = sum(r["seconds"] for r in written)
    return {
        "blocks": len(ctx.blocks),
        "points": len(written),
        "load": round(loaded - started, 2),
        "scores": round(scored - loaded, 2),
        "kl_reference": round(referenced - scored, 2),
        "quantize": round(quantize, 2),
        "evaluate": round(evaluate, 2),
        "bookkeeping": round(ended - referenced - quantize - evaluate, 2),
        "total": round(ended - started, 2),
    }


def deepened_copy(model_overrides: list[str], blocks: int, out: Path) -> Path:
    """A checkpoint of the run's model with `blocks` blocks: its own, repeated in order."""
    run = compose_run("tracking=none", *model_overrides)
    model, tokenizer, own, _ = load(run)
    layers = [copy.deepcopy(own[i % len(own)]) for i in range(blocks)]
    for index, layer in enumerate(layers):
        if hasattr(getattr(layer, "self_attn", None), "layer_idx"):
            layer.self_attn.layer_idx = index  # the KV cache is indexed by it
    own_parent = model.model if hasattr(model, "model") else model
    own_parent.layers = torch.nn.ModuleList(layers)
    model.config.num_hidden_layers = blocks
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[0]] * blocks
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def bench_stages(overrides: list[str], depths=DEPTHS) -> dict:
    """Stage seconds per backend and depth; which stage is slowest at the deepest.
    Backends: rtn and gptq, or the one a `quant=` override names."""
    backends = [o.partition("=")[2] for o in overrides if o.startswith("quant=")] or BACKENDS
    overrides = [o for o in overrides if not o.startswith("quant=")]
    by_depth: dict[str, dict] = {}
    for backend in backends:  # first use compiles kernels (gptqmodel): not a stage's cost
        sweep_stages([*overrides, f"quant={backend}", "sweep.fractions=[1]", "eval.limit=1"])
    with tempfile.TemporaryDirectory() as scratch:
        for blocks in depths:
            path = deepened_copy(overrides, blocks, Path(scratch) / f"d{blocks}")
            model = [f"model.path={path}", f"model.blocks={blocks}"]
            by_depth[str(blocks)] = {
                backend: sweep_stages(
                    [*overrides, *model, f"quant={backend}", f"sweep.fractions={POINTS}"]
                )
                for backend in backends
            }
    return {
        "what": "seconds of each stage of a 3-point sweep (k = 0, L/2, L, plus the reference) "
        f"on copies of the model with {', '.join(map(str, depths))} blocks (after a warm-up)",
        "command": "python -m bench --section stages " + " ".join(overrides),
        "model": compose_run("tracking=none", *overrides).model.name,
        "by_blocks": by_depth,
        "slowest_at_deepest": _slowest(by_depth),
    }


def merge_stages(kept: dict | None, measured: dict) -> dict:
    """A model's stages after a run of some backends (`quant=`): the backends measured now
    replace theirs, the others stay as they were measured before."""
    if not kept or set(kept.get("by_blocks", {})) != set(measured["by_blocks"]):
        return measured
    by_depth = {d: kept["by_blocks"][d] | new for d, new in measured["by_blocks"].items()}
    commands = {kept.get("command"), measured["command"]} - {None}
    return measured | {
        "command": " ; ".join(sorted(commands)),
        "by_blocks": by_depth,
        "slowest_at_deepest": _slowest(by_depth),
    }


def _slowest(by_depth: dict) -> dict:
    deepest = by_depth[max(by_depth, key=int)]
    stages = ("load", "scores", "kl_reference", "quantize", "evaluate", "bookkeeping")
    return {b: max(stages, key=lambda s: deepest[b].get(s, 0.0)) for b in deepest}


CHILD = """
import json, resource, sys
import lwq.runtime
lwq.runtime._reset_host_peak = lambda: False  # each record's peak resets VmHWM; keep the process's
from lwq.config import compose_run
args = json.loads(sys.argv[1])
run = compose_run(*args["overrides"])
out = {}
if args["what"] == "load":
    from lwq.commands.context import load
    model, _, blocks, _ = load(run)
    unique = {t.data_ptr(): t for t in model.state_dict().values()}  # tied weights once
    out["weights_bytes"] = sum(t.numel() * t.element_size() for t in unique.values())
    out["blocks_bytes"] = sum(p.numel() * p.element_size() for p in blocks.parameters())
else:
    from lwq.commands.sweep import run_sweep
    out["points"] = len(run_sweep(run))
out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:  # Linux: ru_maxrss keeps the forking parent's peak across exec; VmHWM is this image's
    with open("/proc/self/status") as status:
        hwm = [line.split()[1] for line in status if line.startswith("VmHWM:")]
    out["peak_rss_bytes"] = int(hwm[0]) * 1024
except (OSError, IndexError):
    pass
print(json.dumps(out))
"""


def _child(what: str, overrides: list[str]) -> dict:
    """What a fresh interpreter reports after loading the model, or after a whole sweep;
    its peak RSS is the larger of its own VmHWM and its VmRSS polled every 10 ms."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps({"what": what, "overrides": overrides})],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    polled = 0
    while child.poll() is None:
        polled = max(polled, _rss_bytes(child.pid))
        time.sleep(0.01)
    out = child.stdout.read()
    if child.returncode:
        raise SystemExit(f"memory bench: the {what} child failed (exit {child.returncode})")
    found = json.loads(out.strip().splitlines()[-1])
    found["peak_rss_bytes"] = max(found["peak_rss_bytes"], polled)
    return found


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return max(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    except (OSError, ValueError):
        return 0


def bench_memory(overrides: list[str]) -> dict:
    """Peak RSS of a whole sweep (fresh process) against the model's weights plus the
    originals lwq keeps of quantized blocks, and against a process that only loads it."""
    with tempfile.TemporaryDirectory() as scratch:
        common = [f"paths.results={scratch}", "tracking=none", *overrides]
        loaded = _child("load", common)
        swept = _child("sweep", [*common, f"sweep.fractions={POINTS}"])
    own = loaded["weights_bytes"] + loaded["blocks_bytes"]
    return {
        "what": "peak RSS of a 3-point sweep (k = 0, L/2, L) in a fresh process, against the "
        "model's weights plus kept originals of every block (all quantized at k = L), and "
        "against a fresh process that only loads the model",
        "command": "python -m bench --section memory " + " ".join(overrides),
        "model": compose_run(*common).model.name,
        "weights_mb": _mb(loaded["weights_bytes"]),
        "kept_originals_mb": _mb(loaded["blocks_bytes"]),
        "load_only_peak_rss_mb": _mb(loaded["peak_rss_bytes"]),
        "sweep_peak_rss_mb": _mb(swept["peak_rss_bytes"]),
        "sweep_over_weights_and_originals": round(swept["peak_rss_bytes"] / own, 2),
        "sweep_minus_load_only_mb": _mb(swept["peak_rss_bytes"] - loaded["peak_rss_bytes"]),
    }


def _mb(n: float) -> float:
    return round(n / 2**20, 1)
