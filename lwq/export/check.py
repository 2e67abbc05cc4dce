"""An exported GGUF checked in llama.cpp: its perplexity as `llama-perplexity` measures it,
against the same text scored by torch on the weights the file holds.

Both sides read the file: llama.cpp runs it; transformers dequantizes every tensor
through the `gguf` package (K-quants included) into the model lwq evaluates. Both follow
llama-perplexity's protocol (text tokenized whole, cut into `n_ctx` chunks, BOS first in a
chunk when the vocabulary adds one, the second half of each chunk scored), so the two
numbers differ only by how each engine computes: llama.cpp rounds activations to 8 bits
for its quantized dot products. Agreement says the file holds the plan and llama.cpp
reads it as lwq does (names, the q/k row order, types).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from lwq.llama_cpp import LlamaCpp, final_perplexity, run_tool


def llama_cpp_perplexity(
    tools: LlamaCpp, gguf: Path, text: str, *, n_ctx: int, chunks: int, threads: int
) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as handle:
        handle.write(text)
        handle.flush()
        command = [str(tools.tool("llama-perplexity")), "-m", str(gguf), "-f", handle.name]
        command += ["-c", str(n_ctx), "-b", str(n_ctx), "--chunks", str(chunks)]
        command += ["-t", str(threads), "--no-warmup"]
        return final_perplexity(run_tool(command, "llama-perplexity"))


@torch.no_grad()
def torch_perplexity(model, ids: list[int], *, n_ctx: int, chunks: int, bos: int | None) -> float:
    """llama-perplexity's protocol on `ids` (the whole text's tokens) with a torch model."""
    if len(ids) < 2 * n_ctx:
        raise ValueError(f"{len(ids)} tokens; llama-perplexity needs at least {2 * n_ctx}")
    first, nll, count = n_ctx // 2, 0.0, 0
    device = next(model.parameters()).device
    for chunk in range(min(chunks, len(ids) // n_ctx)):
        window = list(ids[chunk * n_ctx : (chunk + 1) * n_ctx])
        if bos is not None:
            window[0] = bos
        tokens = torch.tensor([window], device=device)
        logits = model(tokens).logits[0, first : n_ctx - 1].double()
        targets = tokens[0, first + 1 :]
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])
        nll -= float(logprobs.sum())
        count += n_ctx - 1 - first
    return math.exp(nll / count)


def file_tokens(gguf: Path, tokenizer, text: str) -> tuple[list[int], int | None]:
    """The text's tokens as llama.cpp makes them from this file: BOS first when the file's
    vocabulary adds one (returned too, to start each chunk)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields
    add_bos = _field(fields, "tokenizer.ggml.add_bos_token", default=False)
    bos = _field(fields, "tokenizer.ggml.bos_token_id", default=None) if add_bos else None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([bos] if bos is not None else []) + ids, bos


def _field(fields, key: str, default):
    field = fields.get(key)
    return default if field is None else field.contents()
