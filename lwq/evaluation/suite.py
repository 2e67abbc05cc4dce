"""The evaluation suite of a sweep: prepared once, then run on every model variant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lwq.evaluation.harness import Harness, PerplexityTask, lm_eval_version
from lwq.evaluation.perplexity import perplexity
from lwq.texts import chunk_documents, load_texts, seeded_subset

CROSS_CHECK_TOLERANCE = 1e-3  # relative; float32 batching noise is ~1e-6


@dataclass(frozen=True)
class EvalSpec:
    """What is evaluated; every field changes the numbers, so all go into record keys."""

    name: str
    text: str
    chunk_chars: int
    limit: int | None
    seed: int
    max_length: int


class Suite:
    """lm-eval on the prepared tasks, plus perplexity() on the same texts as a cross-check."""

    def __init__(
        self, spec: EvalSpec, *, data_dir: Path, workdir: Path, batch_size: int, cross_check: bool
    ) -> None:
        self.spec = spec
        self.cross_check = cross_check
        self.batch_size = batch_size
        chunks = chunk_documents(load_texts(spec.text, data_dir), spec.chunk_chars)
        self.texts = seeded_subset(chunks, spec.limit, spec.seed)
        self.task_name = f"lwq_{spec.name}_{spec.text}".replace("-", "_").replace(":", "_")
        self.harness = Harness(
            [PerplexityTask(self.task_name, tuple(self.texts))],
            workdir=workdir,
            batch_size=batch_size,
            max_length=spec.max_length,
        )

    def evaluate(self, model, tokenizer) -> dict:
        """{"tasks": {task: {metric: value}}, "cross_check": {...} or None}."""
        tasks = self.harness.evaluate(model, tokenizer)
        check = None
        if self.cross_check:
            ppl = perplexity(
                model,
                tokenizer,
                self.texts,
                max_length=self.spec.max_length,
                batch_size=self.batch_size,
            )
            check = ppl.as_dict()
            lm_eval_value = tasks[self.task_name]["byte_perplexity"]
            check["relative_difference"] = abs(ppl.byte_perplexity / lm_eval_value - 1)
            check["agrees"] = check["relative_difference"] <= CROSS_CHECK_TOLERANCE
        return {"tasks": tasks, "cross_check": check}

    def provenance(self) -> dict:
        return {
            "lm_eval_version": lm_eval_version(),
            "documents": len(self.texts),
            "characters": sum(len(t) for t in self.texts),
        }
