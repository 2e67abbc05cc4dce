"""Evaluation against this machine's limit (`make bench`, section `roofline`).

A point's evaluation runs forward passes over the held-out windows. Their useful work is
the model's forward FLOPs per token (2 x every linear's weights, lm_head included, plus the
attention products at the window's mean causal length) times the tokens; divided by the
seconds of the bare forward loop it is the FLOP rate reached. The limit is the rate torch
reaches on the same matmuls alone: each linear shape of the model multiplied as a
(batch x window) x in by in x out product, timed here in the same run, combined as the
model combines them (its total FLOPs over the summed seconds of its products).
"""

from __future__ import annotations

import time
from collections import Counter

import torch

from bench.pipeline import eval_batches, sync_device, timed_forwards
from lwq.commands.context import load, make_suite
from lwq.config import compose_run

REPEATS = 5  # timed runs per matmul shape; the fastest counts (the machine's limit)


def forward_flops_per_token(model: torch.nn.Module, window: int) -> dict:
    """FLOPs of one token's forward pass: linears and the attention products."""
    linear = sum(2 * m.in_features * m.out_features for m in _linears(model))
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = config.num_attention_heads * head_dim
    mean_context = (window + 1) / 2  # causal: token t attends to t keys
    attention = config.num_hidden_layers * 2 * 2 * mean_context * width  # QK^T and AV
    return {"linear": linear, "attention": round(attention), "total": round(linear + attention)}


def _linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


@torch.no_grad()
def matmul_limit(model: torch.nn.Module, rows: int, device, dtype) -> dict:
    """FLOP/s of torch matmul on the model's linear shapes with `rows` input rows."""
    shapes = Counter((m.in_features, m.out_features) for m in _linears(model))
    seconds, flops, per_shape = 0.0, 0, {}
    for (n_in, n_out), count in shapes.items():
        x = torch.randn(rows, n_in, device=device, dtype=dtype)
        w = torch.randn(n_in, n_out, device=device, dtype=dtype)
        x @ w  # warm-up
        best = min(_timed_matmul(x, w, device) for _ in range(REPEATS))
        product = 2 * rows * n_in * n_out
        per_shape[f"{n_in}x{n_out}"] = {"count": count, "gflops_per_s": _g(product / best)}
        seconds += count * best
        flops += count * product
    return {"rows": rows, "gflops_per_s": _g(flops / seconds), "by_shape": per_shape}


def _timed_matmul(x, w, device) -> float:
    sync_device(device)
    started = time.perf_counter()
    x @ w
    sync_device(device)
    return time.perf_counter() - started


@torch.no_grad()
def bench_roofline(overrides: list[str]) -> dict:
    """Tokens/s of the bare evaluation loop x FLOPs/token against the matmul limit."""
    run = compose_run("tracking=none", *overrides)
    model, tokenizer, _, device = load(run)
    batches = eval_batches(run, model, tokenizer, make_suite(run), device)
    tokens = sum(int(mask.sum()) for _, mask in batches)
    forward_seconds = timed_forwards(model, batches)
    window = run.eval.spec.max_length
    flops = forward_flops_per_token(model, window)
    reached = tokens * flops["total"] / forward_seconds
    dtype = next(model.parameters()).dtype
    limit = matmul_limit(model, run.eval.batch_size * window, device, dtype)
    return {
        "what": "a point's bare evaluation forwards: tokens/s x forward FLOPs/token, against "
        "torch matmul on the model's own linear shapes (batch x window rows), same run",
        "command": "python -m bench --section roofline " + " ".join(overrides),
        "model": run.model.name,
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "tokens": tokens,
        "forward_seconds": round(forward_seconds, 4),  # short runs: 2 decimals lose %
        "tokens_per_s": round(tokens / forward_seconds, 1),
        "flops_per_token": flops,
        "reached_gflops_per_s": _g(reached),
        "matmul_limit": limit,
        "fraction_of_limit": round(reached / (limit["gflops_per_s"] * 1e9), 3),
        "target": 0.5,
    }


def _g(flops_per_s: float) -> float:
    return round(flops_per_s / 1e9, 2)
