"""The benchmarks an eval suite can name (`eval.tasks`), each one of lm-eval's own tasks.

A benchmark is keyed by lm-eval's task name and points at lm-eval's installed YAML, so
prompts, metrics and versions are exactly lm-eval's. Its data comes from one of two
sources (`eval.source`):

- `local`: the files in the data directory (`paths.data`, env LWQ_DATA), converted to
  the hub schema by `lwq.evaluation.local_data` and cut to a seeded subset of `limit`
  documents here, at conversion time, so every point of a sweep sees the same items;
- `hub`: the data set lm-eval's YAML names (needs internet or a populated HF cache);
  the same seeded subset is taken by document index after lm-eval loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lwq.data import seeded_subset
from lwq.errors import LwqError
from lwq.evaluation.kinds import BuiltinTask
from lwq.evaluation.local_data import read_local
from lwq.registry import Registry

SOURCES = ("local", "hub")


@dataclass(frozen=True)
class Benchmark:
    """Where lm-eval defines the task and what the suite does with its numbers."""

    yaml: str  # path under lm_eval/tasks/ of the installed lm-eval
    split: str  # the split lm-eval evaluates (its test_split, else validation_split)
    averaged: bool  # counts in the suite's average of acc / acc_norm


BENCHMARKS: Registry[Benchmark] = Registry("eval task")
for _name, _benchmark in {
    "wikitext": Benchmark("wikitext/wikitext.yaml", "test", averaged=False),
    "arc_easy": Benchmark("arc/arc_easy.yaml", "test", averaged=True),
    "arc_challenge": Benchmark("arc/arc_challenge.yaml", "test", averaged=True),
    "hellaswag": Benchmark("hellaswag/hellaswag.yaml", "validation", averaged=True),
    "piqa": Benchmark("piqa/piqa.yaml", "validation", averaged=True),
    "winogrande": Benchmark("winogrande/default.yaml", "validation", averaged=True),
    "lambada_openai": Benchmark("lambada/lambada_openai.yaml", "test", averaged=True),
}.items():
    BENCHMARKS.register(_name)(_benchmark)


def check_tasks(names: tuple[str, ...], source: str) -> None:
    """Raise a one-line LwqError for an unknown task name or source (before heavy work)."""
    if source not in SOURCES:
        raise LwqError(f"unknown eval.source {source!r}; use one of {', '.join(SOURCES)}")
    for name in names:
        BENCHMARKS.get(name)


def benchmark_task(
    name: str, *, source: str, data_dir: Path, limit: int | None, seed: int
) -> BuiltinTask:
    """lm-eval's task `name` on `source` data, `limit` seeded documents (None = all)."""
    check_tasks((name,), source)
    benchmark = BENCHMARKS.get(name)
    base_yaml = lm_eval_tasks_dir() / benchmark.yaml
    if source == "hub":
        return BuiltinTask(name, base_yaml, benchmark.split, limit=limit, seed=seed)
    docs = seeded_subset(read_local(name, data_dir), limit, seed)
    return BuiltinTask(name, base_yaml, benchmark.split, docs=tuple(docs))


def averaged(names) -> list[str]:
    """The names among `names` that count in the accuracy average."""
    return [name for name in names if name in BENCHMARKS.names() and BENCHMARKS.get(name).averaged]


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent
