"""The evaluation suite of a sweep: prepared once, then run on every model variant.

A suite (`conf/eval/<name>.yaml`) has up to two parts:
- `text`: held-out perplexity of a named text (lwq.texts) through lm-eval's rolling
  loglikelihood, cross-checked by lwq's own `perplexity()` (the `ppl` suite);
- `tasks`: lm-eval's own benchmarks (lwq.evaluation.tasks) on local or hub data, each
  cut to a seeded subset of `limit` documents (`limits` overrides it per task).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lwq.data import chunk_documents, load_texts, seeded_subset, source_files
from lwq.errors import LwqError
from lwq.evaluation.harness import Harness, PerplexityTask, lm_eval_version
from lwq.evaluation.local_data import local_files
from lwq.evaluation.perplexity import perplexity
from lwq.evaluation.tasks import averaged, benchmark_task, check_tasks

CROSS_CHECK_TOLERANCE = 1e-3  # relative; float32 batching noise is ~1e-6
AVERAGED_METRICS = ("acc", "acc_norm")


@dataclass(frozen=True)
class EvalSpec:
    """What is evaluated; every field changes the numbers, so all go into record keys.

    `text` None = no held-out perplexity task; `tasks` are benchmark names (may be
    empty); `limit` is documents per task (None = all), `limits` {task: limit} overrides.
    """

    name: str
    text: str | None
    chunk_chars: int
    limit: int | None
    seed: int
    max_length: int
    tasks: tuple[str, ...] = ()
    source: str = "local"
    limits: dict[str, int | None] = field(default_factory=dict)
    bootstrap_iters: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "limits", dict(self.limits or {}))
        check_tasks(self.tasks, self.source)
        stray = sorted(set(self.limits) - set(self.tasks))
        if stray:
            raise LwqError(f"eval.limits names {stray}, which are not in eval.tasks {self.tasks}")
        if not self.text and not self.tasks:
            raise LwqError(
                "the eval suite has neither a text nor tasks; set eval.text or eval.tasks"
            )

    def limit_for(self, task: str) -> int | None:
        return self.limits.get(task, self.limit)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


class Suite:
    """lm-eval on the prepared tasks, plus perplexity() on the same texts as a cross-check.

    All data is read, converted and subset here, once; `workdir/<spec digest>/` holds
    the suite's task files, so suites of parallel jobs never overwrite each other's.
    """

    def __init__(
        self, spec: EvalSpec, *, data_dir: Path, workdir: Path, batch_size: int, cross_check: bool
    ) -> None:
        self.spec = spec
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.cross_check = cross_check and bool(spec.text)
        self.texts: list[str] = []
        self.task_name = None
        tasks = []
        if spec.text:
            chunks = chunk_documents(load_texts(spec.text, data_dir), spec.chunk_chars)
            self.texts = seeded_subset(chunks, spec.limit, spec.seed)
            self.task_name = f"lwq_{spec.name}_{spec.text}".replace("-", "_").replace(":", "_")
            tasks.append(PerplexityTask(self.task_name, tuple(self.texts)))
        for name in spec.tasks:
            limit = spec.limit_for(name)
            tasks.append(
                benchmark_task(
                    name, source=spec.source, data_dir=data_dir, limit=limit, seed=spec.seed
                )
            )
        self.harness = Harness(
            tasks,
            workdir=Path(workdir) / spec.digest(),
            batch_size=batch_size,
            max_length=spec.max_length,
            bootstrap_iters=spec.bootstrap_iters,
        )

    def evaluate(self, model, tokenizer) -> dict:
        """{"tasks": {task: {metric: value, metric_stderr: value}},
        "average": {"acc": mean, "acc_norm": mean} or None, "cross_check": {...} or None}.
        """
        tasks = self.harness.evaluate(model, tokenizer, desc=f"eval {self.spec.name}")
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
        return {"tasks": tasks, "average": average(tasks), "cross_check": check}

    def data_files(self) -> list[Path]:
        """Every local file the suite's documents were read from (records hash them)."""
        files = source_files(self.spec.text, self.data_dir) if self.spec.text else []
        if self.spec.source == "local":
            files += [f for name in self.spec.tasks for f in local_files(name, self.data_dir)]
        return sorted(set(files))

    def identity(self) -> dict:
        """What changes the numbers, as plain data for record keys: the spec."""
        return asdict(self.spec)

    def provenance(self) -> dict:
        """How the numbers were made: lm-eval and task versions, data source, item counts."""
        out = {
            "lm_eval_version": lm_eval_version(),
            "task_versions": self.harness.task_versions(),
            "items": self.harness.items(),
            "bootstrap_iters": self.spec.bootstrap_iters,
        }
        if self.spec.tasks:
            out["source"] = self.spec.source
        if self.texts:
            out |= {"documents": len(self.texts), "characters": sum(len(t) for t in self.texts)}
        return out


def average(tasks: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """Unweighted mean of acc and acc_norm over the averaged tasks that report each.

    acc covers every accuracy task (LAMBADA included), acc_norm only those with it.
    """
    names = averaged(tasks)
    out = {}
    for metric in AVERAGED_METRICS:
        values = [tasks[name][metric] for name in names if metric in tasks[name]]
        if values:
            out[metric] = sum(values) / len(values)
    return out or None
