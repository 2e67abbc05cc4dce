"""Next-token log-probabilities a bounded number of positions at a time.

A model's forward computes the logits of every position of a batch at once, a
(batch x window x vocabulary) float tensor, and a log-softmax of it is as large again:
0.8 GB each for SmolLM2 at 8 x 512 (49 k vocabulary), ~8 GB each for a 128 k vocabulary
at 8 x 2048. lwq's own measures (held-out perplexity, KL, top-1, sensitivity) need a few
numbers per position, so they run the model with its output layer swapped for a stand-in
that keeps the final hidden states (batch x window x width: 1/85 of the logits for
SmolLM2) and apply the real output layer to `rows` positions at a time.

The numbers equal the whole-logits path up to float32 rounding: the output layer's matmul
over fewer rows may sum in another order (ref-tiny and SmolLM2 on this CPU: identical
to the last bit; tests/test_logits.py allows 1e-6 relative). What a model does to its
logits after the output layer is reproduced for the two post-processings transformers
models use (Gemma's `final_logit_softcapping`, Cohere's `logit_scale`); `OutputHead`
checks on a few tokens that it reproduces the model's own logits and refuses otherwise.
"""

from __future__ import annotations

import contextlib
import math
import weakref

import torch
from torch import nn
from torch.nn import functional as F

from lwq.errors import LwqError

GB = 1e9
DEFAULT_GB = 0.1  # eval.logits_memory's default, for callers given none (conf/eval/*.yaml)
FLOATS_PER_LOGIT = 3  # the sensitivity's float32 logits and float64 exp terms; an evaluation
# holds one float32 buffer of that many positions (ChunkLogprobs), so it stays well inside
_CHECKED: weakref.WeakSet = weakref.WeakSet()  # models whose logits OutputHead reproduces


def rows_per_chunk(vocab: int, memory_gb: float) -> int:
    """Positions whose log-probabilities fit `memory_gb` (at least one)."""
    return max(1, int(memory_gb * GB) // (FLOATS_PER_LOGIT * 4 * vocab))


class _KeepHidden(nn.Module):
    """Stands in for the output layer: keeps its input, returns no logits (zero columns)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.hidden = hidden
        return hidden.new_zeros(*hidden.shape[:-1], 0)


class OutputHead:
    """The model's output layer and what its forward does to the logits after it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.output = model.get_output_embeddings()
        if not isinstance(self.output, nn.Linear):
            raise LwqError(
                f"{type(model).__name__} has no linear output layer to compute bounded "
                "log-probabilities with; set eval.logits_memory=null (whole logits)"
            )
        config = model.config.get_text_config(decoder=True)
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.scale = getattr(config, "logit_scale", None)
        if model not in _CHECKED:  # once a model: its output layer and forward stay the same
            self._check_reproduces()
            _CHECKED.add(model)

    @property
    def vocab(self) -> int:
        return self.output.out_features

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) final hidden states -> (..., V) float32 logits, as the model's forward."""
        logits = self.output(hidden)
        if self.scale is not None:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()

    @torch.no_grad()
    def logits_into(self, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`logits(hidden)` of (N, D) states written into `out`, float32 (N, V), and
        returned: the same operations as the output layer's forward (addmm, or mm without
        a bias), so the same numbers, without a fresh tensor per chunk (83 MB for SmolLM2
        at the default bound: its pages faulted in anew each time)."""
        weight, bias = self.output.weight, self.output.bias
        plain = weight.dtype == torch.float32 and hidden.dim() == 2 and hidden.dtype == weight.dtype
        if not plain or torch.is_autocast_enabled(hidden.device.type):  # autocast skips out=
            return out.copy_(self.logits(hidden))
        if bias is None:
            torch.mm(hidden, weight.t(), out=out)
        else:
            torch.addmm(bias, hidden, weight.t(), out=out)
        if self.scale is not None:
            out.mul_(self.scale)
        if self.softcap is not None:
            out.div_(self.softcap).tanh_().mul_(self.softcap)
        return out

    def logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.logits(hidden), dim=-1)

    @torch.no_grad()
    def logprobs_into(self, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`logprobs(hidden)` written into `out` (N, V) float32: the logits, then the
        log-softmax in place (the same kernel, which reads a row before writing it: equal
        to `logprobs` bit for bit, tests/test_logits.py)."""
        return torch.log_softmax(self.logits_into(hidden, out), dim=-1, out=out)

    @torch.no_grad()
    def final_hidden(self, **inputs) -> torch.Tensor:
        """The (B, S, D) states the output layer would see for one forward of `inputs`."""
        keep = _KeepHidden()
        with self._swapped(keep):
            self.model(**inputs, use_cache=False)
        if keep.hidden is None:
            raise LwqError(f"{type(self.model).__name__}'s forward never called its output layer")
        return keep.hidden

    @contextlib.contextmanager
    def _swapped(self, stand_in: nn.Module):
        self.model.set_output_embeddings(stand_in)
        try:
            yield
        finally:
            self.model.set_output_embeddings(self.output)

    @torch.no_grad()
    def _check_reproduces(self) -> None:
        """Refuse a model whose forward changes its logits in a way not reproduced here."""
        device = self.output.weight.device
        ids = (torch.arange(1, 9, device=device) % self.vocab).unsqueeze(0)
        with torch.autocast(device_type=device.type, enabled=False):  # exact, not bf16's
            whole = self.model(input_ids=ids, use_cache=False).logits.float()
            ours = self.logits(self.final_hidden(input_ids=ids))
        scale = whole.abs().max().item() or 1.0
        if ours.shape != whole.shape or not torch.allclose(ours, whole, rtol=0, atol=1e-3 * scale):
            raise LwqError(
                f"lwq's bounded log-probabilities do not reproduce {type(self.model).__name__}'s "
                "logits (its forward post-processes them); set eval.logits_memory=null"
            )


class ChunkLogprobs:
    """Log-probabilities of a chunk of positions in one buffer every chunk reuses.

    A fresh (N, V) logits tensor and its log-softmax per chunk cost their pages anew each
    time, and below glibc's mmap threshold (32 MB) they come from the heap, where the
    small tensors kept between them (a reference's top k) pin the holes they leave: RSS
    then climbs chunk after chunk (SmolLM2 at 32 MB chunks: +390 MiB in one pass).
    """

    def __init__(self, head: OutputHead) -> None:
        self.head = head
        self._buffer: torch.Tensor | None = None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, D) final hidden states -> (N, V) float32 log-probabilities: a view of the
        buffer, valid until the next call."""
        n, buffer = len(hidden), self._buffer
        if buffer is None or len(buffer) < n or buffer.device != hidden.device:
            buffer = self._buffer = torch.empty((n, self.head.vocab), device=hidden.device)
        return self.head.logprobs_into(hidden, buffer[:n])


def whole_logprobs(model, **inputs) -> torch.Tensor:
    """(B, S, V) float32 log-probabilities from the model's own logits (no memory bound)."""
    return F.log_softmax(model(**inputs, use_cache=False).logits.float(), dim=-1)


def chunks(total: int, rows: int | None):
    """Slices of `rows` positions covering range(total); one slice without a bound."""
    step = total if rows is None else rows
    return [slice(a, min(a + step, total)) for a in range(0, total, max(step, 1))]


def describe(rows: int, vocab: int) -> str:
    """What one chunk of log-probabilities holds, for the dry run."""
    mb = rows * vocab * 4 * FLOATS_PER_LOGIT / 1e6
    return f"{rows} positions x {vocab} vocabulary at a time ({math.ceil(mb)} MB)"
