"""The `backends` section of `make bench`: per backend and bit-width, the seconds to
quantize every block of the reference model and the evaluation speed (tokens per second
of a forward pass over fixed calibration windows), with the bytes the plan holds and the
held-out token perplexity it reaches. A calibrated backend's seconds include capturing
its calibration inputs (the `calib` group's windows)."""

from __future__ import annotations

import time

import torch

from lwq.commands.context import load
from lwq.config import RunConfig, compose_run
from lwq.data import calibration_ids, chunk_documents, load_texts, seeded_subset
from lwq.errors import LwqError
from lwq.evaluation.perplexity import perplexity
from lwq.modeling.capture import BlockInputs
from lwq.plan import Plan
from lwq.quant import BACKENDS, make_backend
from lwq.quant.base import FULL_PRECISION
from lwq.quant.cost import SizeTable
from lwq.quant.engine import Engine
from lwq.quant.install import PlanApplier

HELDOUT_PIECES = 12  # of 4000 characters, a seeded subset of the model's eval text


@torch.no_grad()
def tokens_per_second(model, ids: torch.Tensor, batch_size: int = 8) -> float:
    """Forward passes over `ids` (N, S); the best of two runs (the first warms caches)."""
    device = next(model.parameters()).device
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        for i in range(0, len(ids), batch_size):
            model(input_ids=ids[i : i + batch_size].to(device), use_cache=False)
        best = min(best, time.perf_counter() - started)
    return ids.numel() / best


# settings over the conf file's for the bench: SliderQuant's documented CPU preset (its
# conf has the authors' 60 epochs, GPU hours; docs/backends.md)
BENCH_SETTINGS = {"slider": {"epochs": 20}}


def bench_backends(
    run: RunConfig,
    heldout_pieces: int = HELDOUT_PIECES,
    speed_samples: int = 16,
    short: bool = False,
) -> dict:
    """{backend: {bits: {quantize_seconds, tokens_per_second, weight_bytes}}} plus 16-bit.
    The tests shrink `heldout_pieces` and `speed_samples` and take each backend's short
    contract settings (`short`): what is measured stays."""
    model, tokenizer, blocks, _ = load(run)
    texts = load_texts(run.calib.text, run.paths.data)
    ids = calibration_ids(texts, tokenizer, samples=speed_samples, seq_len=256, seed=0)
    c = run.calib
    calib = calibration_ids(texts, tokenizer, samples=c.samples, seq_len=c.seq_len, seed=c.seed)
    heldout = load_texts(run.model.eval_text, run.paths.data)
    heldout = seeded_subset(chunk_documents(heldout, 4000), heldout_pieces, seed=0)

    def heldout_ppl() -> float:
        ppl = perplexity(model, tokenizer, heldout, max_length=run.model.max_length)
        return round(ppl.token_perplexity, 3)

    n = len(blocks)
    out = {
        "unquantized": {
            "tokens_per_second": round(tokens_per_second(model, ids)),
            "heldout_token_ppl": heldout_ppl(),
        }
    }
    for name in BACKENDS.names():
        # conf/quant/<name>.yaml's settings (16-bit sweep ends: every backend can do them)
        quant = compose_run(f"quant={name}", "sweep.high=16", "sweep.low=16").quant
        extra = BACKENDS.get(name).contract.settings if short else BENCH_SETTINGS.get(name, {})
        backend = make_backend(name, **{**quant.settings, **extra})
        out[name] = {"settings": backend.settings()}
        sizes = SizeTable(model, blocks, backend)
        for bits in sorted(backend.supported_bits - {FULL_PRECISION}):
            plan = Plan((bits,) * n)
            try:
                weight_bytes = sizes.cost(plan).weight_bytes
            except LwqError as err:  # a shape this width cannot pack (gguf's K-quants)
                out[name][str(bits)] = {"refused": str(err)}
                continue
            engine = Engine(backend, lambda: BlockInputs.capture(model, blocks, calib))
            applier = PlanApplier(blocks, engine)
            started = time.perf_counter()
            applier.apply(plan)
            seconds = time.perf_counter() - started
            out[name][str(bits)] = {
                "quantize_seconds": round(seconds, 3),
                "tokens_per_second": round(tokens_per_second(model, ids)),
                "weight_bytes": weight_bytes,
                "heldout_token_ppl": heldout_ppl(),
            }
            applier.restore()
    what = (
        f"all {n} blocks of {run.model.name} at one width; forward speed on {speed_samples} x "
        f"256 tokens; token perplexity on {heldout_pieces} pieces of {run.model.eval_text}"
    )
    return {"what": what, **out}
