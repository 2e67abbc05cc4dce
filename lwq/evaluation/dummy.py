"""`eval=dummy`: numbers from the model's weights instead of lm-eval, to test the plumbing.

lm-eval's `DummyLM` idea, turned around: the model is real and the evaluation is not. Each
task gets perplexity-shaped numbers made from a sha256 of the installed weights, so the
same plan gives the same numbers in any process and two plans give different ones, in
milliseconds and without importing lm-eval. Records, claims, stops and resumes then run
as in a real sweep (tests/test_reliability.py, a cluster dry test). It measures nothing.
"""

from __future__ import annotations

import hashlib
import math

import torch

from lwq.errors import LwqError
from lwq.evaluation.kinds import PerplexityTask

NAME = "dummy"  # conf/eval/dummy.yaml
VERSION = 1  # of the numbers' recipe; bump when it changes (records name it per task)
HASHED = 1 << 16  # leading elements hashed per tensor: any two plans already differ there


class DummyHarness:
    """What the suite asks of a `Harness`, for text tasks, with the weights as the scorer."""

    def __init__(self, tasks: list) -> None:
        others = [task.name for task in tasks if not isinstance(task, PerplexityTask)]
        if others:
            raise LwqError(f"eval=dummy scores a text only, not {others}; set eval.tasks=[]")
        self.tasks = tuple(tasks)

    def evaluate(self, model, tokenizer, *, desc: str = "", skip=frozenset(), rolling=None) -> dict:
        numbers = weight_numbers(model)
        return {task.name: dict(numbers) for task in self.tasks if task.name not in skip}

    def task_versions(self) -> dict[str, str]:
        return {task.name: f"{NAME}-{VERSION}" for task in self.tasks}

    def fewshot(self) -> dict[str, int]:
        return {task.name: 0 for task in self.tasks}

    def items(self) -> dict[str, int]:
        return {task.name: len(task.texts) for task in self.tasks}


def weights_digest(model: torch.nn.Module) -> bytes:
    """sha256 of every tensor of `model.state_dict()` (names, dtypes, shapes and the first
    `HASHED` elements), as installed now: quantized blocks, removed blocks and all."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            continue
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        head = tensor.detach().flatten()[:HASHED].cpu().to(torch.float64)  # exact for any dtype
        digest.update(head.numpy().tobytes())
    return digest.digest()


def weight_numbers(model: torch.nn.Module) -> dict[str, float]:
    """The fields a text task records, consistent with each other as lm-eval's are:
    byte perplexity in [2, 4) from the digest, bits per byte its log2, and the word
    perplexity of 5-byte words."""
    fraction = int.from_bytes(weights_digest(model)[:8], "big") / 2**64
    byte_perplexity = 2.0 + 2.0 * fraction
    return {
        "bits_per_byte": math.log2(byte_perplexity),
        "byte_perplexity": byte_perplexity,
        "word_perplexity": byte_perplexity**5,
    }
