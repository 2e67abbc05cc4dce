"""lm-eval's log-likelihood requests answered without one row's whole logits.

HFLM answers a batch of (context, continuation) token requests by taking the log-softmax
of the whole (batch x length x vocabulary) logits. lwq lowers its batch to what
`eval.logits_memory` allows (lm_eval_internals.rows_within), down to one row, but one
row is all positions of a window: 512 x 262 k float32 logits and their log-softmax are
1 GB, whatever the bound. When even one row does not fit, lwq answers the requests itself
(`answer_requests`): the model runs with its output layer held back (OutputHead), and the
continuation's positions get their log-probabilities a bounded number at a time.

What HFLM answers, reproduced: per request the summed log-probability of the
continuation tokens and whether every one of them is the argmax, from the same input
(context + continuation truncated on the left to max_length + 1 tokens, the last dropped),
right-padded with zeros and no attention mask in batches of the configured size, longest
first (a causal model never sees the padding), under HFLM's autocast; answers in request
order, and a request with a cache key reaches lm-eval's cache hook. The numbers equal
HFLM's to float32 rounding: the output layer's matmul over fewer rows may sum in another
order; the log-softmax is float32 (HFLM: the logits' dtype, unless `softmax_dtype`).
Causal models only; a seq2seq model keeps HFLM's path.
"""

from __future__ import annotations

import torch

from lwq.evaluation.logits import ChunkLogprobs, OutputHead, chunks, rows_per_chunk

Request = tuple  # (cache key or None, context token ids, continuation token ids)


def row_bytes(length: int, vocab: int) -> int:
    """What HFLM holds for one row: float32 logits and their log-softmax."""
    return 2 * 4 * length * vocab


def answer_requests(lm, requests: list[Request], memory_gb: float) -> list[tuple[float, bool]]:
    """(summed log-probability, greedy) per request, as HFLM._loglikelihood_tokens gives
    them, never holding more than `memory_gb` of log-probabilities at once."""
    head = OutputHead(lm.model)
    rows = rows_per_chunk(head.vocab, memory_gb)
    logprobs_of = ChunkLogprobs(head)  # one buffer for every request's chunks
    inputs = [
        (context + continuation)[-(lm.max_length + 1) :][:-1]
        for _, context, continuation in requests
    ]
    order = sorted(
        range(len(requests)),
        key=lambda i: (
            -len(requests[i][1] + requests[i][2]),
            tuple(requests[i][1] + requests[i][2]),
        ),
    )
    answers: list[tuple[float, bool] | None] = [None] * len(requests)
    autocast = torch.autocast(
        device_type=lm.device.type,
        dtype=lm.mixed_precision_dtype,
        enabled=lm.mixed_precision_dtype is not None,
    )
    batch_size = lm.batch_size_per_gpu
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        padded = torch.zeros(
            len(batch), max(len(inputs[i]) for i in batch), dtype=torch.long, device=lm.device
        )
        for row, i in enumerate(batch):
            padded[row, : len(inputs[i])] = torch.tensor(inputs[i], dtype=torch.long)
        with torch.no_grad(), autocast:
            hidden = head.final_hidden(input_ids=padded)
            for row, i in enumerate(batch):
                key, _, continuation = requests[i]
                end = len(inputs[i])
                scored = hidden[row, end - len(continuation) : end]
                answers[i] = _answer(logprobs_of, scored, continuation, rows, lm.device)
                if key is not None:
                    lm.cache_hook.add_partial("loglikelihood", key, answers[i])
    return answers


def _answer(
    logprobs_of: ChunkLogprobs, scored: torch.Tensor, continuation: list[int], rows: int, device
):
    """The continuation's summed log-probability (one float32 sum over its positions, as
    HFLM's) and whether each of its tokens is the argmax."""
    target = torch.tensor(continuation, dtype=torch.long, device=device)
    picked, greedy = [], True
    for part in chunks(len(continuation), rows):
        logprobs = logprobs_of(scored[part])
        picked.append(logprobs.gather(-1, target[part, None]).squeeze(-1))
        greedy = greedy and bool((logprobs.argmax(dim=-1) == target[part]).all())
    return float(torch.cat(picked).sum()), greedy
