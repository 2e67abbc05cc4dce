"""A small rolling-window perplexity, the cross-check for lm-eval's rolling loglikelihood.

Windows follow lm-eval's `loglikelihood_rolling` with `context_len=1`: every token of a
text is predicted exactly once; the first from a prefix token (BOS, else EOS), each
later window of `max_length` targets from the token just before it. A shorter last
window is read with the `max_length` tokens before its end, as lm-eval does
(`lm_eval.utils.get_rolling_token_windows`), so its targets see more context.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lwq.evaluation.logits import (
    ChunkLogprobs,
    OutputHead,
    chunks,
    rows_per_chunk,
    whole_logprobs,
)


@dataclass(frozen=True)
class Perplexity:
    """Summed negative log-likelihood (nats) and the units it is normalised by."""

    nll: float
    tokens: int
    words: int
    bytes: int

    @property
    def token_perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def word_perplexity(self) -> float:
        return math.exp(self.nll / self.words)

    @property
    def byte_perplexity(self) -> float:
        return math.exp(self.nll / self.bytes)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / self.bytes / math.log(2)

    def as_dict(self) -> dict[str, float]:
        return {
            "token_perplexity": self.token_perplexity,
            "word_perplexity": self.word_perplexity,
            "byte_perplexity": self.byte_perplexity,
            "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens,
        }


def prefix_token_id(tokenizer) -> int:
    """The token the first prediction of a text is conditioned on (lm-eval's choice)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else None
    token = token if token is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("tokenizer has neither a BOS nor an EOS token to start a text from")
    return token


def rolling_windows(ids: list[int], prefix: int, max_length: int) -> list[tuple[list, list]]:
    """(inputs, targets) pairs covering every token of `ids` once, inputs at most max_length.

    `targets` are the next tokens of the *last* len(targets) positions of `inputs`.
    """
    padded = [prefix, *ids]  # padded[i] is the input that predicts ids[i]
    windows = []
    for start in range(0, len(ids), max_length):
        end = min(start + max_length, len(ids))
        first = max(0, end - max_length)  # < start only for a short last window
        windows.append((padded[first:end], ids[start:end]))
    return windows


TargetsHook = Callable[[torch.Tensor, torch.Tensor], None]


def token_windows(tokenizer, texts: list[str], max_length: int) -> list[tuple[list, list]]:
    """Every (inputs, targets) window of `texts`, text after text, as `perplexity` reads them."""
    prefix = prefix_token_id(tokenizer)
    windows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        windows.extend(rolling_windows(ids, prefix, max_length))
    return windows


@torch.no_grad()
def perplexity(
    model,
    tokenizer,
    texts: list[str],
    *,
    max_length: int,
    batch_size: int = 8,
    each: TargetsHook | None = None,
    logits_memory: float | None = None,
) -> Perplexity:
    """Perplexity of `model` on `texts`, each scored on its own (no text sees another).

    `each(logprobs, targets)`, if given, sees the (T, V) next-token log-probabilities of
    consecutive runs of targets, window after window, in order: one forward pass serves a
    second measure (the KL divergence of lwq.evaluation.divergence). `logits_memory` (GB)
    bounds the log-probabilities that exist at once (lwq.evaluation.logits); None = a
    batch's whole logits, as the model returns them.
    """
    windows = token_windows(tokenizer, texts, max_length)
    device = next(model.parameters()).device
    bounded = rows = None
    if logits_memory is not None:
        bounded = ChunkLogprobs(OutputHead(model))  # one buffer for every batch's chunks
        rows = rows_per_chunk(bounded.head.vocab, logits_memory)
    nll = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(windows), batch_size):
        nll += _batch_nll(model, windows[i : i + batch_size], device, each, bounded, rows)
    return Perplexity(
        nll=nll.item(),
        tokens=sum(len(t) for _, t in windows),
        words=sum(len(re.split(r"\s+", text)) for text in texts),
        bytes=sum(len(text.encode("utf-8")) for text in texts),
    )


def _batch_nll(
    model,
    windows: list[tuple[list, list]],
    device: torch.device,
    each: TargetsHook | None,
    bounded: ChunkLogprobs | None,
    rows: int | None,
) -> torch.Tensor:
    """Summed NLL (float64) of the targets of a batch of right-padded windows (targets
    end-aligned), from `rows` target positions' log-probabilities at a time."""
    width = max(len(inp) for inp, _ in windows)
    inputs = torch.zeros(len(windows), width, dtype=torch.long)
    targets = torch.full((len(windows), width), -100, dtype=torch.long)
    mask = torch.zeros(len(windows), width, dtype=torch.long)
    for row, (inp, tgt) in enumerate(windows):
        inputs[row, : len(inp)] = torch.tensor(inp)
        targets[row, len(inp) - len(tgt) : len(inp)] = torch.tensor(tgt)
        mask[row, : len(inp)] = 1
    batch = {"input_ids": inputs.to(device), "attention_mask": mask.to(device)}
    targets = targets.to(device)
    valid = targets != -100  # row by row, positions ascending: the order `each` sees
    if bounded is None:
        states, measure = whole_logprobs(model, **batch)[valid], lambda x: x
    else:
        states, measure = bounded.head.final_hidden(**batch)[valid], bounded
    wanted = targets[valid]
    nll = torch.zeros((), dtype=torch.float64, device=device)
    for part in chunks(len(wanted), rows):
        logprobs = measure(states[part])  # (n, V)
        if each is not None:
            each(logprobs, wanted[part])
        # a gather, not F.nll_loss; summed in float64
        nll -= logprobs.gather(-1, wanted[part].unsqueeze(-1)).double().sum()
    return nll
