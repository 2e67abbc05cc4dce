"""Measured sensitivity: the ground truth the cheap scores (LIM, ZD) are judged against.

For each block alone, quantize it (the run's backend, `bits`) and measure the mean
KL divergence KL(p_full || p_quantized) of the next-token distribution over the
calibration tokens, plus the perplexity ratio. Costs one forward pass over the
calibration set per (block, bit-width), from the quantized block on: the blocks before it
are full precision, so the hidden states entering it are recorded once (advanced block by
block) and handed on (lwq.modeling.capture.starting_at), which halves the blocks run on
average with the same numbers. The blocks come from the run's own variant source, so a
calibrated backend (GPTQ) builds each (block, bits) once for the metric and the sweep.

Memory (`logits_memory`, GB, the evaluation's setting): the reference is not kept as
log-probabilities (32 x 256 calibration tokens x 49 k vocabulary is 1.6 GB for SmolLM2,
the paper's 128 x 2048 with a 128 k vocabulary ~134 GB) but as what the KL needs per
token: with logits z = s (W h + b) of final hidden states h, and p the reference's
distribution, KL(p || q) = u . (h_p - h_q) + lse(z_q) - lse(z_p), u = s W^T p, the bias
cancelling. So a token keeps u (width floats) and two numbers, and every (block, width)
pass computes its logits `rows` positions at a time (lwq.evaluation.logits). It is also
more exact: against float64 log-probabilities the float32 whole-logits formula was off by
up to 1.3e-3 relative on small KLs of shrunk models, this one by at most 5e-5 (it never
subtracts two nearly equal float32 log-probabilities; a test checks every family). An
output layer with soft-capped logits (Gemma-2) is refused, since the
identity needs logits linear in h. `logits_memory=None` keeps the whole-logits path.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from lwq.errors import LwqError
from lwq.evaluation.logits import DEFAULT_GB, OutputHead, chunks, rows_per_chunk
from lwq.metrics.base import METRICS, Metric, Scores
from lwq.modeling.blocks import block_linears
from lwq.modeling.capture import BlockInputs, starting_at
from lwq.quant.base import FULL_PRECISION
from lwq.quant.engine import Engine
from lwq.quant.install import PlanApplier
from lwq.runtime import freed_after
from lwq.units import KINDS, alone, make_units


@torch.no_grad()
@freed_after()
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


def _logsumexp_(logits: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
    """Per row, max-shifted, summed in float64 (the KL is a small difference of two of
    them); `logits` is overwritten with the exp terms and `wide`, a float64 buffer of its
    shape, with them widened. The numbers of a float64 sum of a fresh (N, V) temporary,
    whose pages and widening cost a SmolLM2 sensitivity pass ~0.5 s of its ~2.9 s."""
    top = logits.amax(dim=-1, keepdim=True)
    return top.squeeze(-1).double() + wide.copy_(logits.sub_(top).exp_()).sum(dim=-1).log()


class CalibrationKL:
    """Per calibration token what the KL against the model as built needs (see the module);
    `measure()` then gives the KL of the model as it stands (sensitivity, plan search)."""

    @freed_after()
    def __init__(self, head: OutputHead, calibration: torch.Tensor, batch_size: int, rows: int):
        if head.softcap is not None:
            raise LwqError(
                "sensitivity with bounded logits needs logits linear in the hidden states; "
                "this model soft-caps them: set eval.logits_memory=null"
            )
        self.head, self.calibration, self.rows = head, calibration, rows
        self.batch_size = batch_size
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # see _chunk
        self.pulled: list[torch.Tensor] = []  # per batch (N, D) float32: u = s W^T p
        self.dot: list[torch.Tensor] = []  # per batch (N,) float64: u . h_p
        self.lse: list[torch.Tensor] = []  # per batch (N,) float64: lse(z_p)
        weight = head.output.weight
        scale = 1.0 if head.scale is None else head.scale
        nll, tokens = 0.0, 0
        for hidden, targets in self._passes():
            pulled = torch.empty_like(hidden)
            lse = torch.empty(len(hidden), dtype=torch.float64, device=hidden.device)
            for part in chunks(len(hidden), rows):
                logits, wide, picked = self._chunk(hidden, targets, part)
                lse[part] = _logsumexp_(logits.clone(), wide)  # once: logits kept for probs
                nll += (lse[part] - picked).sum().item()
                probs = logits.sub_(lse[part].float().unsqueeze(-1)).exp_()
                pulled[part] = (probs @ weight.float()) * scale
            self.pulled.append(pulled.cpu())
            self.dot.append((pulled.double() * hidden.double()).sum(-1).cpu())
            self.lse.append(lse.cpu())
            tokens += len(targets)
        self.nll = nll / tokens

    def _chunk(self, hidden: torch.Tensor, targets: torch.Tensor, part: slice):
        """(logits, a float64 buffer of their shape, the targets' logits) of the positions
        `part`: the logits written into a buffer every chunk reuses, with the other one
        for their exp terms widened (3 float32s a logit: the memory bound)."""
        n, device = part.stop - part.start, hidden.device
        if self._buffers is None or len(self._buffers[0]) < n or self._buffers[0].device != device:
            shape = (n, self.head.vocab)
            self._buffers = (
                torch.empty(shape, device=device),
                torch.empty(shape, dtype=torch.float64, device=device),
            )
        logits = self.head.logits_into(hidden[part], self._buffers[0][:n])
        picked = logits.gather(-1, targets[part, None]).squeeze(-1)
        return logits, self._buffers[1][:n], picked

    @classmethod
    def of(cls, model, calibration: torch.Tensor, batch_size: int, logits_memory: float):
        """The reference of `model` as it stands, logits `logits_memory` GB at a time."""
        head = OutputHead(model)
        return cls(head, calibration, batch_size, rows_per_chunk(head.vocab, logits_memory))

    def _passes(self):
        """(final hidden states (N, D), next tokens (N,)) of each calibration batch, the
        last position of every sequence dropped (it predicts nothing here)."""
        device = self.head.output.weight.device
        for start in range(0, len(self.calibration), self.batch_size):
            ids = self.calibration[start : start + self.batch_size].to(device)
            hidden = self.head.final_hidden(input_ids=ids)[:, :-1]
            yield hidden.reshape(-1, hidden.shape[-1]), ids[:, 1:].reshape(-1)

    def measure(self) -> tuple[float, float]:
        """Mean KL(reference || model as it stands) per token, and the model's mean NLL.
        Called many times in a row (a table, a search), so the heap is trimmed after the
        series, not after each (every pass would fault its pages in again)."""
        kl = nll = 0.0
        tokens = 0
        for n, (hidden, targets) in enumerate(self._passes()):
            pulled = self.pulled[n].to(hidden.device)
            kl += (self.dot[n].sum() - (pulled.double() * hidden.double()).sum()).item()
            kl -= self.lse[n].sum().item()
            for part in chunks(len(hidden), self.rows):
                logits, wide, picked = self._chunk(hidden, targets, part)
                lse = _logsumexp_(logits, wide)
                kl += lse.sum().item()
                nll += (lse - picked).sum().item()
            tokens += len(targets)
        return kl / tokens, nll / tokens


class _WholeReference:
    """The reference's whole log-probabilities kept on the host (no memory bound)."""

    def __init__(self, model, calibration: torch.Tensor, batch_size: int) -> None:
        self.model, self.calibration, self.batch_size = model, calibration, batch_size
        self.logprobs = _logprobs(model, calibration, batch_size)
        self.nll = _kl_and_nll(self.logprobs, self.logprobs, calibration)[1]

    def measure(self) -> tuple[float, float]:
        quantized = _logprobs(self.model, self.calibration, self.batch_size)
        return _kl_and_nll(self.logprobs, quantized, self.calibration)


@torch.no_grad()
@freed_after()
def sensitivity_scores(
    model,
    blocks,
    calibration: torch.Tensor,
    *,
    engine: Engine,
    bits: int,
    table_bits: list[int] | None = None,
    batch_size: int = 8,
    logits_memory: float | None = DEFAULT_GB,
    unit: str = "block",
    ties: list[list[str]] | None = None,
    checkpoint: Path | None = None,
) -> Scores:
    """KL at `bits` per block (higher = more important); `details` has `kl@b` and `ppl@b`
    for every b in `table_bits` (and `bits`), plus the full-precision `ppl@16`.

    `engine` builds the quantized blocks (the run's backend); the model is left as given.
    `logits_memory` (GB) bounds the log-probabilities held at once; None = whole logits.
    `unit` (lwq.units: sublayer, linear with `ties`) measures each unit of every block
    alone instead, in block order: then the values are per unit. With `checkpoint` (a file
    named by the table's cache key) the rows of every finished block are saved, and a
    killed table resumes after them (a linear-unit table of SmolLM2 takes hours).
    """
    check_sensitivity({"bits": bits, "table_bits": table_bits})
    widths = sorted({bits, *(table_bits or [])})
    names = [[name for name, _ in block_linears(block)] for block in blocks]
    units = make_units(names, unit, [tuple(t) for t in ties or ()])
    n_linears = [len(n) for n in names]
    if logits_memory is None:
        reference = _WholeReference(model, calibration, batch_size)
    else:
        reference = CalibrationKL.of(model, calibration, batch_size, logits_memory)
    entering = BlockInputs.capture(model, blocks, calibration, batch_size)
    details: dict[str, list[float]] = {f"{kind}@{b}": [] for b in widths for kind in ("kl", "ppl")}
    done, started, before = 0, time.time(), 0.0
    if checkpoint is not None and Path(checkpoint).is_file():
        saved = json.loads(Path(checkpoint).read_text())
        done, details, before = saved["blocks_done"], saved["details"], saved["seconds"]
    applier = PlanApplier(blocks, engine)
    try:
        for i in range(done):  # finished before a kill: only their hidden states are needed
            entering.advance(blocks[i])
        for i in range(done, len(blocks)):
            for u in (u for u, one in enumerate(units) if one.block == i):
                for b in widths:
                    applier.apply(alone(units, u, b, n_linears))
                    with starting_at(blocks, entering):
                        kl, nll = reference.measure()
                    details[f"kl@{b}"].append(kl)
                    details[f"ppl@{b}"].append(math.exp(nll))
            if i + 1 < len(blocks):
                applier.restore()  # block i back as loaded, on the model's device
                entering.advance(blocks[i])
                if checkpoint is not None:
                    seconds = before + time.time() - started
                    _save_rows(Path(checkpoint), i + 1, details, seconds)
    finally:
        applier.restore()
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    details["ppl@16"] = [math.exp(reference.nll)] * len(units)
    rows = {k: tuple(v) for k, v in details.items()}
    seconds = round(before + time.time() - started, 2)  # every run's part, if resumed
    return Scores(tuple(details[f"kl@{bits}"]), True, rows, seconds=seconds)


def _save_rows(path: Path, blocks_done: int, details: dict, seconds: float) -> None:
    """The rows of the first `blocks_done` blocks, replaced whole (never half written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    saved = {"blocks_done": blocks_done, "details": details, "seconds": seconds}
    partial.write_text(json.dumps(saved))
    os.replace(partial, path)


def check_sensitivity(settings: dict) -> None:
    unit = settings.get("unit", "block")
    if unit not in KINDS:
        raise LwqError(f"metric.settings.unit must be one of {', '.join(KINDS)}, got {unit!r}")
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
