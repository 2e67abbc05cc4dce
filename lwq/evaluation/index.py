"""lm-eval's own index of tasks, groups and tags, so that any of its thousands of tasks
can be named (`eval.tasks=[boolq, mmlu]`) and a misspelt one is refused before the model
loads, with a "did you mean".

Building the index (lm-eval's `TaskManager()`) reads every task YAML it ships: seconds
on a fast machine, half a minute on a busy 2-core one. It is kept as JSON in the user's
cache directory (`$XDG_CACHE_HOME/lwq`, else `~/.cache/lwq`), one file per lm-eval
version, and rebuilt only when that version changes.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lwq.errors import LwqError


@dataclass(frozen=True)
class Entry:
    """One name of lm-eval's index: a task (with its YAML and evaluated split), a group
    (children and how lm-eval aggregates them) or a tag (the tasks carrying it)."""

    name: str
    kind: str  # task | group | tag
    yaml: str | None = None
    split: str | None = None  # the split lm-eval evaluates: its test split, else validation
    children: tuple[str, ...] = ()
    weight_by_size: bool = True  # groups: lm-eval's aggregate_metric_list setting
    aggregate: tuple[str, ...] = ()  # groups: the metrics lm-eval aggregates


class TaskIndex:
    def __init__(self, entries: dict[str, Entry]) -> None:
        self.entries = entries

    def get(self, name: str) -> Entry:
        if name not in self.entries:
            close = difflib.get_close_matches(name, self.entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise LwqError(
                f"unknown eval task {name!r}{hint}: not one of lm-eval's "
                f"{len(self.entries)} tasks, groups and tags, nor in eval.include_path"
            )
        return self.entries[name]

    def leaves(self, name: str) -> list[str]:
        """The tasks a name stands for, in lm-eval's order (a task stands for itself)."""
        entry = self.get(name)
        if entry.kind == "task":
            return [name]
        out: list[str] = []
        for child in entry.children:
            out += [leaf for leaf in self.leaves(child) if leaf not in out]
        return out


def load_index(cache_dir: Path | None = None) -> TaskIndex:
    """lm-eval's index, from the cache or built (and cached) now."""
    from importlib import metadata

    version = metadata.version("lm_eval")
    cache = (cache_dir or _user_cache()) / f"lm_eval_tasks-{version}.json"
    if cache.is_file():
        try:
            raw = json.loads(cache.read_text())
            return TaskIndex({name: _entry(name, e) for name, e in raw.items()})
        except (OSError, ValueError, TypeError, KeyError):
            pass  # a damaged cache is rebuilt
    entries = _build()
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps({n: _raw(e) for n, e in entries.items()}))
    os.replace(partial, cache)
    return TaskIndex(entries)


def _build() -> dict[str, Entry]:
    from lm_eval.tasks import TaskManager

    index = TaskManager().task_index
    entries: dict[str, Entry] = {}
    tagged: dict[str, list[str]] = {}
    for name, item in index.items():
        for tag in item.tags or ():
            tagged.setdefault(tag, []).append(name)
    for name, item in index.items():
        kind = item.kind.name.lower()
        cfg = item.cfg or {}
        if kind in ("task", "py_task"):
            split = cfg.get("test_split") or cfg.get("validation_split")
            entries[name] = Entry(name, "task", str(item.yaml_path), split)
        elif kind == "group":
            children = cfg.get("task") or []
            aggregates = cfg.get("aggregate_metric_list") or []
            aggregates = aggregates if isinstance(aggregates, list) else [aggregates]
            aggregates = [a if isinstance(a, dict) else {"metric": str(a)} for a in aggregates]
            entries[name] = Entry(
                name,
                "group",
                str(item.yaml_path),
                children=tuple(children if isinstance(children, list) else [children]),
                weight_by_size=all(a.get("weight_by_size", True) for a in aggregates),
                aggregate=tuple(a["metric"] for a in aggregates if "metric" in a),
            )
        elif kind == "tag":
            entries[name] = Entry(name, "tag", children=tuple(sorted(tagged.get(name, []))))
    return entries


def _raw(entry: Entry) -> dict:
    return {
        "kind": entry.kind,
        "yaml": entry.yaml,
        "split": entry.split,
        "children": list(entry.children),
        "weight_by_size": entry.weight_by_size,
        "aggregate": list(entry.aggregate),
    }


def _entry(name: str, raw: dict) -> Entry:
    return Entry(
        name,
        raw["kind"],
        raw["yaml"],
        raw["split"],
        tuple(raw["children"]),
        raw["weight_by_size"],
        tuple(raw["aggregate"]),
    )


def _user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lwq"
