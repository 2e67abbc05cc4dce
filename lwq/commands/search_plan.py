"""`allocate.method=search`: the budget's plan found by evolutionary search (lwq.search)
with the KL of the whole plan to the unquantized model on calibration tokens as fitness.

Each candidate is installed through the run's applier (cached variants: a GPTQ block is
built once per width) and measured by `CalibrationKL` on the first `tokens` calibration
tokens of its stage, its forwards starting at the first block that differs from a plan
measured before (lwq.modeling.prefix: a child differs from its parent in a few blocks).
The search starts from the DP allocator's plan; its result and its checkpoint live in
`results/cache/search/`, keyed by everything the plan depends on, so a killed search
resumes and a finished one is computed once for every job of the run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from lwq.claims import computed_once
from lwq.evaluation.logits import DEFAULT_GB
from lwq.metrics.sensitivity import CalibrationKL
from lwq.modeling.prefix import PrefixCache
from lwq.plan import Plan
from lwq.runtime import digest, freed_after
from lwq.search import Problem, SearchSettings, search

SEARCH_VERSION = 1  # of the fitness; bump when what a plan's score means changes
ALL_BLOCKS = 10**9  # keep_at: every boundary (LRU under the reuse memory)


class PlanFitness:
    """fitness(plan, stage): mean KL of the installed plan on the stage's tokens. The
    search's plans give each unit a width; `to_plan` makes the model's plan of them."""

    def __init__(self, ctx, settings: SearchSettings, to_plan: Callable = Plan) -> None:
        self.ctx = ctx
        self.to_plan = to_plan
        self.applier = ctx.applier()
        calibration = ctx.calibration()
        seq_len = calibration.shape[1]
        memory = ctx.logits_memory or DEFAULT_GB
        self.references = [
            CalibrationKL.of(
                ctx.model, calibration[: max(1, math.ceil(tokens / seq_len))], 8, memory
            )
            for tokens, _ in settings.schedule
        ]
        self.cache = PrefixCache(ctx.reuse_memory or 0.5, ctx.reuse_on)
        self.calls = 0

    @torch.no_grad()
    def __call__(self, bits: tuple[int, ...], stage: int) -> float:
        plan = self.to_plan(tuple(bits))
        self.applier.apply(plan)
        keep_at = set(range(1, len(plan.bits)))
        with self.cache.reusing(self.ctx.blocks, self.ctx.engine.keys(plan), keep_at):
            kl, _ = self.references[stage].measure()
        self.calls += 1
        return kl

    def close(self) -> None:
        self.applier.restore()


def searched_plan(
    ctx, problem: Problem, start: Plan, settings: SearchSettings, key: dict, to_plan=Plan
):
    """(unit plan, facts for the record) of the search, cached by `key` (see the module);
    `to_plan` turns a unit plan into the model's (lwq.units; blocks: itself)."""
    name = "search-" + digest({**key, "version": SEARCH_VERSION})
    folder = Path(ctx.cache_dir) / "search"
    result_file = folder / f"{name}.json"

    def cached():
        return json.loads(result_file.read_text()) if result_file.is_file() else None

    @freed_after()  # its fitness calls leave the heap's pages for the next
    def compute():
        started = time.time()
        fitness = PlanFitness(ctx, settings, to_plan)
        try:
            result = search(
                problem, fitness, settings, start=start.bits, checkpoint=folder / f"{name}.ckpt"
            )
            start_kl = fitness(start.bits, len(settings.schedule) - 1)
        finally:
            fitness.close()
        out = {
            "plan": list(result.plan),
            "calibration_kl": result.fitness,
            "bytes": result.bytes,
            "start": list(start.bits),
            "start_calibration_kl": start_kl,
            "generations": len(result.history),
            "fitness_calls": list(result.calls),
            "seconds": round(time.time() - started, 1),
            "blocks_skipped": fitness.cache.blocks_skipped,
            "blocks_run": fitness.cache.blocks_run,
            "settings": {k: v for k, v in asdict(settings).items() if k != "progress"},
        }
        folder.mkdir(parents=True, exist_ok=True)
        partial = result_file.with_name(f".{result_file.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(out))
        os.replace(partial, result_file)
        return out

    out, _ = computed_once(folder / "claims", name, cached, compute)
    return Plan(tuple(out["plan"])), out
