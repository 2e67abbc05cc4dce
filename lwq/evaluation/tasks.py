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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lwq.data import seeded_subset
from lwq.errors import LwqError
from lwq.evaluation.index import Entry, TaskIndex, load_index
from lwq.evaluation.kinds import BuiltinTask, UserTask
from lwq.evaluation.local_data import READERS, read_local, read_mapped
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


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise LwqError(f"unknown eval.source {source!r}; use one of {', '.join(SOURCES)}")


@dataclass(frozen=True)
class Group:
    """A group lm-eval aggregates: its entry and its parts (tasks or groups; a tag among
    its children stands for the tasks it tags, as in lm-eval)."""

    entry: Entry
    parts: tuple[str, ...]


@dataclass(frozen=True)
class Requested:
    """The tasks a suite evaluates: each name of `eval.tasks` resolved to tasks (a group or
    tag stands for its tasks), and the groups whose numbers lm-eval would aggregate."""

    tasks: list[BuiltinTask | UserTask]
    groups: dict[str, Group]


def resolve_tasks(
    names: tuple[str, ...],
    *,
    source: str,
    data_dir: Path,
    limits: dict[str, int | None],
    default_limit: int | None,
    seed: int,
    num_fewshot: dict[str, int],
    local: dict[str, dict],
    user_tasks: set[str],
    index: Callable[[], TaskIndex],
) -> Requested:
    """Every task the names stand for. The seven built-in benchmarks, user tasks and
    local entries need no index; any other name is looked up in lm-eval's (cached)."""
    check_source(source)
    tasks: list = []
    groups: dict[str, Group] = {}
    for name in names:
        if name in user_tasks:
            tasks.append(UserTask(name, num_fewshot.get(name)))
            continue
        leaves = [name] if name in BENCHMARKS.names() else _leaves(name, index(), groups)
        for leaf in leaves:
            if any(t.name == leaf for t in tasks):
                continue
            base, split = _definition(leaf, index)
            tasks.append(
                benchmark_task(
                    leaf,
                    base_yaml=base,
                    split=split,
                    source=source,
                    data_dir=data_dir,
                    limit=limits.get(leaf, limits.get(name, default_limit)),
                    seed=seed,
                    num_fewshot=num_fewshot.get(leaf, num_fewshot.get(name, 0)),
                    local=local.get(leaf),
                )
            )
    return Requested(tasks, groups)


def _leaves(name: str, index: TaskIndex, groups: dict[str, Group]) -> list[str]:
    """The tasks `name` stands for; every group on the way is noted in `groups`."""
    entry = index.get(name)
    if entry.kind == "group":
        parts: list[str] = []
        for child in entry.children:
            kind = index.get(child).kind
            if kind == "group":
                _leaves(child, index, groups)
            parts += index.leaves(child) if kind == "tag" else [child]
        groups[name] = Group(entry, tuple(parts))
    return index.leaves(name)


def _definition(name: str, index: Callable[[], TaskIndex]) -> tuple[Path, str]:
    """(lm-eval's task YAML, the split it evaluates) of a task."""
    if name in BENCHMARKS.names():
        benchmark = BENCHMARKS.get(name)
        return lm_eval_tasks_dir() / benchmark.yaml, benchmark.split
    entry = index().get(name)
    if entry.split not in ("test", "validation"):
        raise LwqError(
            f"task {name!r} evaluates split {entry.split!r}; lwq runs test or validation splits"
        )
    return Path(entry.yaml), entry.split


def benchmark_task(
    name: str,
    *,
    base_yaml: Path | None = None,
    split: str | None = None,
    source: str,
    data_dir: Path,
    limit: int | None,
    seed: int,
    num_fewshot: int = 0,
    local: dict | None = None,
) -> BuiltinTask:
    """lm-eval's task `name` on `source` data, `limit` seeded documents (None = all).

    Local data comes from the built-in converter of the seven benchmarks, or from a
    `local` entry (`{file: <json/jsonl/parquet/csv>, fields: {task field: file field}}`).
    `base_yaml` and `split` default to lm-eval's definition of the task.
    """
    check_source(source)
    if base_yaml is None or split is None:
        base_yaml, split = _definition(name, load_index)
    if source == "hub":
        return BuiltinTask(name, base_yaml, split, limit=limit, seed=seed, num_fewshot=num_fewshot)
    if local is not None:
        docs = read_mapped(name, local)
    elif name in READERS.names():
        docs = read_local(name, data_dir)
    else:
        raise LwqError(
            f"eval.source=local has no data for task {name!r}; give it a file with "
            f"eval.local.{name}={{file: <path>, fields: {{...}}}}, or use eval.source=hub"
        )
    docs = seeded_subset(docs, limit, seed)
    return BuiltinTask(name, base_yaml, split, docs=tuple(docs), num_fewshot=num_fewshot)


def check_task_names(
    names: tuple[str, ...],
    *,
    source: str,
    local: dict[str, dict],
    include_path: Path | None,
    index: Callable[[], TaskIndex],
) -> None:
    """Every name is a task, group or tag of lm-eval's index or the user's, and with local
    data every task it stands for has some; checked before anything loads (reads the
    cached index only when a name is none of the built-in seven)."""
    check_source(source)
    user = user_task_names(include_path)
    for name in names:
        if name in user:
            continue
        leaves = [name] if name in BENCHMARKS.names() else index().leaves(name)
        lacking = [t for t in leaves if t not in local and t not in READERS.names()]
        if source == "local" and lacking:
            raise LwqError(
                f"eval.source=local has no data for task {lacking[0]!r}"
                + (f" (of {name})" if lacking[0] != name else "")
                + f"; give it a file with eval.local.{lacking[0]}={{file: <path>, fields: "
                "{...}}, or use eval.source=hub"
            )


def user_task_names(include_path: Path | None) -> set[str]:
    """The tasks defined by the lm-eval YAML files in `include_path` (none if None)."""
    if include_path is None:
        return set()
    if not Path(include_path).is_dir():
        raise LwqError(f"eval.include_path={include_path} is not a directory of task YAMLs")
    from lm_eval.tasks import TaskManager

    return set(TaskManager(include_path=str(include_path), include_defaults=False).all_tasks)


def averaged(names) -> list[str]:
    """The names among `names` that count in the accuracy average (every task but the
    perplexity-only WikiText)."""
    return [n for n in names if n not in BENCHMARKS.names() or BENCHMARKS.get(n).averaged]


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent
