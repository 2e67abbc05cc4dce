"""Measured sensitivity: the ground truth the cheap scores (LIM, ZD) are judged against.

For each block alone, quantize it (the run's backend, `bits`) and measure the mean
KL divergence KL(p_full || p_quantized) of the next-token distribution over the
calibration tokens, plus the perplexity ratio. Costs one forward pass over the
calibration set per (block, bit-width), from the quantized block on: the blocks before it
are full precision, so the hidden states entering it are recorded once (advanced block by
block) and handed on (lwq.modeling.capture.starting_at), which halves the blocks run on
average with the same numbers. The full-precision log-probabilities are computed once and
kept on the host. The blocks come from the run's own variant source, so a
calibrated backend (GPTQ) builds each (block, bits) once for the metric and the sweep.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from lwq.errors import LwqError
from lwq.metrics.base import METRICS, Metric, Scores
from lwq.modeling.capture import BlockInputs, starting_at
from lwq.plan import Plan
from lwq.quant.base import FULL_PRECISION
from lwq.quant.engine import Engine
from lwq.quant.install import PlanApplier


@torch.no_grad()
def _logprobs(model, calibration: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(calibration), batch_size):
        ids = calibration[start : start + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]  # (B, S-1, V)
        out.append(F.log_softmax(logits.float(), dim=-1).cpu())
    return out


def _kl_and_nll(reference: list[torch.Tensor], quantized: list[torch.Tensor], calibration):
    """Mean KL(ref || quantized) per token and mean NLL of the true next tokens."""
    kl = nll = 0.0
    tokens = 0
    start = 0
    for ref, q in zip(reference, quantized, strict=True):
        targets = calibration[start : start + len(ref), 1:]  # (B, S-1)
        start += len(ref)
        kl += F.kl_div(q, ref, log_target=True, reduction="sum").item()
        nll -= q.gather(-1, targets.unsqueeze(-1)).sum().item()
        tokens += targets.numel()
    return kl / tokens, nll / tokens


@torch.no_grad()
def sensitivity_scores(
    model,
    blocks,
    calibration: torch.Tensor,
    *,
    engine: Engine,
    bits: int,
    table_bits: list[int] | None = None,
    batch_size: int = 8,
) -> Scores:
    """KL at `bits` per block (higher = more important); `details` has `kl@b` and `ppl@b`
    for every b in `table_bits` (and `bits`), plus the full-precision `ppl@16`.

    `engine` builds the quantized blocks (the run's backend); the model is left as given.
    """
    check_sensitivity({"bits": bits, "table_bits": table_bits})
    widths = sorted({bits, *(table_bits or [])})
    reference = _logprobs(model, calibration, batch_size)
    _, ref_nll = _kl_and_nll(reference, reference, calibration)
    entering = BlockInputs.capture(model, blocks, calibration, batch_size)
    details: dict[str, list[float]] = {f"{kind}@{b}": [] for b in widths for kind in ("kl", "ppl")}
    applier = PlanApplier(blocks, engine)
    try:
        for i in range(len(blocks)):
            for b in widths:
                applier.apply(
                    Plan(tuple(b if j == i else FULL_PRECISION for j in range(len(blocks))))
                )
                with starting_at(blocks, entering):
                    quantized = _logprobs(model, calibration, batch_size)
                kl, nll = _kl_and_nll(reference, quantized, calibration)
                details[f"kl@{b}"].append(kl)
                details[f"ppl@{b}"].append(math.exp(nll))
            if i + 1 < len(blocks):
                applier.restore()  # block i back as loaded, on the model's device
                entering.advance(blocks[i])
    finally:
        applier.restore()
    details["ppl@16"] = [math.exp(ref_nll)] * len(blocks)
    return Scores(tuple(details[f"kl@{bits}"]), True, {k: tuple(v) for k, v in details.items()})


def check_sensitivity(settings: dict) -> None:
    if FULL_PRECISION in {settings.get("bits"), *(settings.get("table_bits") or [])}:
        raise LwqError(
            "metric.settings bits and table_bits must not contain 16 (that is the reference)"
        )


METRICS.register("sensitivity")(
    Metric(
        "sensitivity",
        sensitivity_scores,
        needs_calibration=True,
        needs_quantizer=True,
        check=check_sensitivity,
    )
)
