"""The `evaluation` section of `make bench`: what the evaluation of one point of the
default sweep costs in each mode (lwq's own perplexity pass on every point, as before
the cross-check moved to the reference point; lm-eval alone; lm-eval plus the KL pass),
and how far the top-k KL bound lies below the exact KL on the reference model."""

from __future__ import annotations

import statistics
import tempfile
import time

from lwq.commands.context import load
from lwq.commands.sweep import run_sweep
from lwq.config import compose_run
from lwq.data import chunk_documents, load_texts, seeded_subset
from lwq.evaluation.divergence import KLMeter, TopKCollector
from lwq.evaluation.perplexity import perplexity
from lwq.plan import Plan
from lwq.quant import make_backend
from lwq.quant.engine import Engine
from lwq.quant.install import PlanApplier

MODES = {
    "before: cross-check pass at every point": ["eval.kl=false", "eval.cross_check=all"],
    "after, kl off: lm-eval only (cross-check on the reference)": ["eval.kl=false"],
    "after, default: lm-eval + the KL pass (it carries the cross-check)": [],
}


def bench_eval_modes(overrides: list[str]) -> dict:
    """Median evaluation seconds per quantized point of the default sweep, per mode."""
    out = {}
    for mode, extra in MODES.items():
        with tempfile.TemporaryDirectory() as scratch:
            run = compose_run(f"paths.results={scratch}", "tracking=none", *overrides, *extra)
            started = time.time()
            records = run_sweep(run)
            total = time.time() - started
        seconds = [r["seconds"] for r in records if r["kind"] == "quantized"]
        out[mode] = {
            "eval_seconds_per_point_median": round(statistics.median(seconds), 2),
            "sweep_seconds": round(total, 1),
        }
    return {"what": "evaluation seconds per point of the default sweep", **out}


def bench_kl_bound(overrides: list[str], pieces: int = 8) -> dict:
    """Mean KL to the unquantized model, exact (full vocabulary) and as the top-k bound, with
    every block of the reference model at one RTN width."""
    run = compose_run("tracking=none", *overrides)
    model, tokenizer, blocks, _ = load(run)
    texts = load_texts(run.model.eval_text, run.paths.data)
    texts = seeded_subset(chunk_documents(texts, 4000), pieces, seed=0)
    vocab = model.get_output_embeddings().weight.shape[0]

    def measure(each):
        perplexity(model, tokenizer, texts, max_length=run.model.max_length, each=each)
        return each

    references = {k: measure(TopKCollector(k)).result() for k in (64, 256, 1024, vocab)}
    applier = PlanApplier(blocks, Engine(make_backend("rtn")))
    out = {}
    try:
        for bits in (4, 3, 2):
            applier.apply(Plan((bits,) * len(blocks)))
            kl = {k: measure(KLMeter(ref)).stats()["mean"] for k, ref in references.items()}
            exact = kl.pop(vocab)
            below = {f"k={k} below exact": f"{1 - v / exact:.1%}" for k, v in kl.items()}
            out[f"{bits} bits"] = {"exact_mean_kl": round(exact, 6), **below}
    finally:
        applier.restore()
    return {"what": f"top-k KL bound vs exact, {run.model.name}, {pieces} held-out pieces", **out}
