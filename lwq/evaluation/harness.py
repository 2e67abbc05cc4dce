"""Evaluate an in-memory model through lm-evaluation-harness's public API, fully offline.

A `Harness` is prepared once per sweep (`prepare()`, the one place it does I/O; the
constructor only keeps its arguments): it writes each task's documents (jsonl) and an
lm-eval task YAML into a work directory, indexes that directory only (`TaskManager`)
and builds the lm-eval task objects once (data loaded, documents processed).
`Harness.evaluate` then runs `lm_eval.evaluator.evaluate` on those same objects for each
model variant, one task at a time (a progress bar per task). Reusing a task object is
safe: `Task.build_all_requests` replaces its instances on every call, so responses never
leak from one call into the next. Two pure steps are done once per harness instead of
once per call: rendering the requests (`RequestsOnce`: fresh copies of the first call's
instances, responses empty) and tokenizing each (context, continuation) pair
(`encode_once_hflm`); both live in lwq.evaluation.lm_eval_internals with the version check.
The model is run every time; no response is cached.

`lm_eval.simple_evaluate` is not used: per call it rebuilds every task from its YAML and
collects environment information (`pip list`, git), ~0.6 s of pure overhead per point.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from lwq.data import seeded_subset
from lwq.errors import LwqError
from lwq.evaluation.kinds import TASK_VERSION, BuiltinTask, PerplexityTask, UserTask
from lwq.evaluation.lm_eval_internals import (
    RequestsOnce,
    check_version,
    encode_once_hflm,
    go_offline,
    lm_eval_version,
    quiet_lm_eval,
)

__all__ = ["TASK_VERSION", "BuiltinTask", "Harness", "PerplexityTask", "lm_eval_version"]

Task = PerplexityTask | BuiltinTask | UserTask
FEWSHOT_SEED = 1234  # lm-eval's default fewshot seed (simple_evaluate); unused at zero-shot


class Harness:
    """lm-eval tasks prepared once per sweep, then evaluated on many model variants.

    `workdir` belongs to the harness: lm-eval indexes every YAML in it. It holds
    `<task>.jsonl` (local documents) and `<task>.yaml` per task and `datasets_cache/`
    (the `datasets` cache of those jsonl files). A file is rewritten only when its
    content changed, so the `datasets` cache of unchanged tasks stays valid.
    `limit` keeps the first `limit` documents of every task (lm-eval's `limit`);
    `bootstrap_iters` is lm-eval's, for the stderr of bootstrapped metrics (perplexity).
    """

    def __init__(
        self,
        tasks: list[Task],
        *,
        workdir: Path,
        batch_size: int,
        max_length: int,
        limit: int | None = None,
        bootstrap_iters: int = 1000,
        verbose: bool = False,
        include_path: Path | None = None,
        logits_memory: float | None = None,
        autocast: str | None = None,
    ) -> None:
        _check_tasks(tasks, limit)
        self.tasks = tuple(tasks)
        self.workdir = Path(workdir).resolve()
        self.batch_size = batch_size
        self.max_length = max_length
        self.limit = limit
        self.bootstrap_iters = bootstrap_iters
        self.verbose = verbose
        self.logits_memory = logits_memory  # GB bound on lm-eval's log-softmax (its rows)
        self.autocast = autocast  # HFLM's mixed_precision_dtype (it disables an outer autocast)
        self.include_path = None if include_path is None else Path(include_path).resolve()
        self._lms: dict[tuple, Any] = {}
        self._loaded: dict[str, Any] | None = None
        self._samples: dict[str, Any] = {}

    def prepare(self) -> Harness:
        """Write every task's files, index the work directory and build lm-eval's task
        objects, once; returns the harness, ready to evaluate."""
        check_version()  # before anything reaches into lm-eval
        if not any(task.documents() is None for task in self.tasks):
            go_offline()  # hub tasks load their data once, below; everything else is local
        quiet_lm_eval(self.verbose)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for task in self.tasks:
            self._write_task(task)
        self._loaded = self._load_tasks()
        self._samples = {t.name: self._sample(t) for t in self.tasks if _subsets_hub_docs(t)}
        return self

    def evaluate(
        self,
        model,
        tokenizer,
        *,
        desc: str = "eval",
        skip: set[str] | frozenset = frozenset(),
        rolling=None,
    ) -> dict[str, dict[str, float]]:
        """{task: {metric: value, metric + "_stderr": value}} for `model` on every task but
        those named in `skip`; `rolling()`, if given, is a context every rolling
        log-likelihood (held-out text) runs in (prefix reuse), not the accuracy tasks'.

        A stderr is present only where lm-eval computes one (not for the weighted
        perplexities). Puts `model` in eval mode; the first call with a model also calls
        `model.tie_weights()` and gives `tokenizer` a pad token if it has none (HFLM).
        """
        if self._loaded is None:
            raise LwqError("the harness was not prepared; call Harness(...).prepare() first")
        _check_context(model, self.max_length)
        go_offline()
        model.eval()  # blocks swapped in since the last call may be in training mode
        from lm_eval.evaluator import evaluate

        scores: dict[str, dict[str, float]] = {}
        wanted = [task for task in self.tasks if task.name not in skip]
        bar = tqdm(wanted, desc=desc, unit="task", leave=False)
        for task in bar:
            bar.set_postfix_str(task.name)
            samples = {task.name: self._samples[task.name]} if task.name in self._samples else None
            lm = self._lm(model, tokenizer, task.lm_options)
            lm.lwq_rolling = rolling
            try:
                out = evaluate(
                    lm=lm,
                    task_dict={"tasks": {task.name: self._loaded[task.name]}},
                    limit=self.limit,
                    samples=samples,
                    bootstrap_iters=self.bootstrap_iters,
                    log_samples=False,
                )
            finally:
                lm.lwq_rolling = None
            scores[task.name] = _task_scores(out["results"][task.name])
        return scores

    def task_versions(self) -> dict[str, Any]:
        """{task: version} as lm-eval reports it in a result's "versions"."""
        return {name: task.VERSION for name, task in self._loaded.items()}

    def fewshot(self) -> dict[str, int]:
        """{task: number of few-shot examples in each prompt}."""
        return {name: task.get_config("num_fewshot") for name, task in self._loaded.items()}

    def items(self) -> dict[str, int]:
        """{task: number of documents evaluated at every call}."""
        counts = {}
        for name, task in self._loaded.items():
            n = len(self._samples[name]) if name in self._samples else len(task.eval_docs)
            counts[name] = n if self.limit is None else min(n, self.limit)
        return counts

    def _lm(self, model, tokenizer, options: dict[str, Any]):
        """One HFLM per (model, tokenizer, options), kept for the harness' lifetime."""
        key = (id(model), id(tokenizer), tuple(sorted(options.items())))
        held = self._lms.get(key)
        if held is None or held[0] is not model or held[1] is not tokenizer:
            lm = encode_once_hflm()(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=self.batch_size,
                max_length=self.max_length,
                mixed_precision_dtype=self.autocast,
                **options,
            )
            lm.lwq_quiet = not self.verbose
            lm.lwq_logits_memory = self.logits_memory
            held = self._lms[key] = (model, tokenizer, lm)
        return held[2]

    def _load_tasks(self) -> dict[str, Any]:
        """Index the workdir and build every task object once (zero-shot, lm-eval's seed)."""
        from lm_eval.tasks import TaskManager

        # include_defaults=False: only our YAMLs (and the user's); indexing lm-eval's
        # built-in tasks costs ~6 s, and ours `include:` theirs by path anyway.
        paths = [str(self.workdir)] + ([str(self.include_path)] if self.include_path else [])
        manager = TaskManager(include_path=paths, include_defaults=False)
        names = [task.name for task in self.tasks]
        unindexed = [name for name in names if name not in manager.all_tasks]
        if unindexed:
            raise LwqError(f"lm-eval did not index tasks {unindexed} written to {self.workdir}")
        loaded = _load(manager, names, from_hub=any(t.documents() is None for t in self.tasks))
        fewshot = {task.name: task.num_fewshot for task in self.tasks}
        for name, task in loaded.items():  # what simple_evaluate does to every task it loads
            wanted = fewshot.get(name)  # None: a user task's own YAML decides
            if wanted is not None or task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=wanted or 0)
            task.set_fewshot_seed(seed=FEWSHOT_SEED)
            task.build_all_requests = RequestsOnce(task)
        return loaded

    def _sample(self, task: BuiltinTask) -> list[int]:
        """Seeded document indices of a hub task: the same subset at every call."""
        n = len(self._loaded[task.name].eval_docs)
        return seeded_subset(list(range(n)), task.limit, task.seed)

    def _write_task(self, task: Task) -> None:
        if isinstance(task, UserTask):
            return  # the user's YAML, read where it is
        data = self.workdir / f"{task.name}.jsonl"
        docs = task.documents()
        if docs is not None:
            _write_if_changed(data, "".join(json.dumps(doc) + "\n" for doc in docs))
        config = task_config(task, data, cache_dir=self.workdir / "datasets_cache")
        text = yaml.safe_dump(config, sort_keys=False)
        _write_if_changed(self.workdir / f"{task.name}.yaml", text)


def task_config(task: Task, data: Path, *, cache_dir: Path) -> dict[str, Any]:
    """The lm-eval task YAML of `task`; local documents are read from the jsonl `data`."""
    config: dict[str, Any] = {"task": task.name}
    if task.documents() is not None:
        config |= {
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {task.split: str(data)}, "cache_dir": str(cache_dir)},
        }
    return config | task.lm_eval_config()


def _load(manager, names: list[str], *, from_hub: bool) -> dict[str, Any]:
    """lm-eval task objects; a failed hub download becomes one LwqError naming the fix."""
    try:
        return manager.load(names)["tasks"]
    except Exception as err:  # noqa: BLE001 - a hub download can fail in many ways
        if not from_hub:
            raise
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise LwqError(
            f"could not load the hub data of {names} ({type(err).__name__}: {first_line}); "
            "eval.source=hub needs internet or a populated Hugging Face cache with "
            "HF_DATASETS_OFFLINE/HF_HUB_OFFLINE unset, else use eval.source=local"
        ) from err


def _subsets_hub_docs(task: Task) -> bool:
    return isinstance(task, BuiltinTask) and task.docs is None and task.limit is not None


def _task_scores(result: dict[str, Any]) -> dict[str, float]:
    """lm-eval's "metric,filter" entries as numbers; "name", "alias" and "N/A" stderrs dropped."""
    return {
        key.removesuffix(",none"): float(value)
        for key, value in result.items()
        if "," in key and not isinstance(value, str)
    }


def _write_if_changed(path: Path, text: str) -> None:
    """Write atomically (a parallel job may read the file) and only if the text changed."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _check_tasks(tasks: list[Task], limit: int | None) -> None:
    if not tasks:
        raise LwqError("no tasks given to the harness; pass at least one task")
    names = [task.name for task in tasks]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise LwqError(f"task names {twice} given more than once; names must be unique")
    if limit is not None and any(_subsets_hub_docs(task) for task in tasks):
        raise LwqError("give either the harness a limit or the hub tasks theirs, not both")


def _check_context(model, max_length: int) -> None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise LwqError(
            f"max_length={max_length} exceeds the model's max_position_embeddings={limit}; "
            "lower the evaluation max_length"
        )
