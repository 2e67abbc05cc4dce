"""Calibration sequences: fixed-length token windows sampled from a text source."""

from __future__ import annotations

import torch

from lwq.errors import LwqError


def calibration_ids(texts: list[str], tokenizer, *, samples: int, seq_len: int, seed: int):
    """`samples` windows of `seq_len` tokens, drawn with a seed from the texts joined by EOS.

    Returns a (samples, seq_len) long tensor on the CPU; no padding, so every token counts.
    """
    sep = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if sep is not None:
            ids.append(sep)
    if len(ids) <= seq_len:
        raise LwqError(
            f"calibration text has {len(ids)} tokens, fewer than calib.seq_len={seq_len}; "
            "use a longer text or a smaller calib.seq_len"
        )
    stream = torch.tensor(ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len, (samples,), generator=gen)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
