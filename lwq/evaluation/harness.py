"""Evaluate an in-memory model through lm-evaluation-harness's public API, fully offline.

A `Harness` is prepared once per sweep: it writes each task's documents (jsonl) and an
lm-eval task YAML into a work directory and builds one `TaskManager` over that directory
only. `Harness.evaluate` then wraps each model variant in `HFLM` and runs
`lm_eval.simple_evaluate` on the task names. Nothing is cached between calls: lm-eval
rebuilds the requests from the documents every time and the model is run every time.

A task kind (only `PerplexityTask` so far; multiple-choice kinds such as ARC or
HellaSwag would be siblings) says three things: its documents, its lm-eval YAML keys and
the HFLM options it needs.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import yaml

from lwq.errors import LwqError

TASK_VERSION = 1  # metadata.version of every YAML written here; bump when the layout changes

# metric -> lm-eval aggregation (lm_eval/api/metrics.py); all three are lower-is-better.
_PERPLEXITY_METRICS = {
    "word_perplexity": "weighted_perplexity",
    "byte_perplexity": "weighted_perplexity",
    "bits_per_byte": "bits_per_byte",
}
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class PerplexityTask:
    """Rolling log-likelihood (lm-eval `loglikelihood_rolling`) over `texts`, one document each.

    Scores match `lwq.evaluation.perplexity.perplexity` on the same texts: words are
    `re.split(r"\\s+")` pieces, bytes are UTF-8 bytes, every token is predicted once.
    """

    name: str
    texts: tuple[str, ...]

    # The prefix token (BOS, else EOS) already starts every text, so the tokenizer must not
    # add its own BOS: with HFLM's default (add_bos_token=None) a BOS-adding tokenizer puts
    # a second BOS into the scored tokens, and P(BOS | BOS) is added to the text's NLL.
    lm_options: ClassVar[dict[str, Any]] = {"add_bos_token": False}

    def __post_init__(self) -> None:
        _check_task_name(self.name)
        if isinstance(self.texts, str) or not isinstance(self.texts, tuple | list):
            raise LwqError(
                f"task {self.name!r}: texts must be a tuple of strings, one per document"
            )
        object.__setattr__(self, "texts", tuple(self.texts))
        if not self.texts:
            raise LwqError(f"task {self.name!r} has no texts; give it at least one document")
        for i, text in enumerate(self.texts):
            if not isinstance(text, str):
                raise LwqError(f"task {self.name!r}: text {i} is a {type(text).__name__}, not str")
            if not text.strip():
                # lm-eval would score no tokens yet count one word: a silent garbage number.
                raise LwqError(f"task {self.name!r}: text {i} is empty; drop it from the texts")

    def documents(self) -> list[dict[str, str]]:
        return [{"text": text} for text in self.texts]

    def lm_eval_config(self) -> dict[str, Any]:
        """This kind's task YAML keys (the harness adds name, dataset and version)."""
        return {
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            # The column name rather than "{{text}}": lm-eval literal_evals a rendered target
            # that looks like a list, so "[1, 2]" would become [1, 2] (Task.doc_to_target).
            "doc_to_target": "text",
            "metric_list": [
                {"metric": metric, "aggregation": aggregation, "higher_is_better": False}
                for metric, aggregation in _PERPLEXITY_METRICS.items()
            ],
        }


class Harness:
    """lm-eval tasks prepared once per sweep, then evaluated on many model variants.

    `workdir` belongs to the harness: lm-eval indexes every YAML in it. It holds
    `<task>.jsonl` and `<task>.yaml` per task and `datasets_cache/` (the `datasets`
    cache of those jsonl files). A file is rewritten only when its content changed, so
    the `datasets` cache of unchanged tasks stays valid.
    """

    def __init__(
        self,
        tasks: list[PerplexityTask],
        *,
        workdir: Path,
        batch_size: int,
        max_length: int,
        limit: int | None = None,
    ) -> None:
        _check_tasks(tasks)
        _check_positive(batch_size=batch_size, max_length=max_length, limit=limit)
        self.tasks = tuple(tasks)
        self.workdir = Path(workdir).resolve()
        self.batch_size = batch_size
        self.max_length = max_length
        self.limit = limit
        _go_offline()
        _quiet_lm_eval()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for task in self.tasks:
            self._write_task(task)

        from lm_eval.tasks import TaskManager

        # include_defaults=False: only our YAMLs; indexing lm-eval's built-in tasks costs ~6 s.
        self._task_manager = TaskManager(include_path=str(self.workdir), include_defaults=False)
        unindexed = [t.name for t in self.tasks if t.name not in self._task_manager.all_tasks]
        if unindexed:
            raise LwqError(f"lm-eval did not index tasks {unindexed} written to {self.workdir}")

    def evaluate(self, model, tokenizer) -> dict[str, dict[str, float]]:
        """{task: {metric: value, metric + "_stderr": value}} for `model` on every task.

        A stderr is present only where lm-eval computes one (not for perplexities).
        HFLM puts `model` in eval mode, calls `model.tie_weights()` and gives `tokenizer`
        a pad token if it has none.
        """
        _check_context(model, self.max_length)
        _go_offline()

        import lm_eval
        from lm_eval.models.huggingface import HFLM

        scores: dict[str, dict[str, float]] = {}
        for options, names in _group_by_lm_options(self.tasks).items():
            lm = HFLM(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=self.batch_size,
                max_length=self.max_length,
                **dict(options),
            )
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=names,
                task_manager=self._task_manager,
                limit=self.limit,
                log_samples=False,
                cache_requests=False,
                # None: do not reseed the caller's random, numpy and torch generators.
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
            )
            scores |= {name: _task_scores(out["results"][name]) for name in names}
        return scores

    def task_versions(self) -> dict[str, Any]:
        """{task: version} as lm-eval reports it in a result's "versions"."""
        loaded = self._task_manager.load([task.name for task in self.tasks])["tasks"]
        return {name: task.VERSION for name, task in loaded.items()}

    def _write_task(self, task: PerplexityTask) -> None:
        data = self.workdir / f"{task.name}.jsonl"
        _write_if_changed(data, "".join(json.dumps(doc) + "\n" for doc in task.documents()))
        config = {
            "task": task.name,
            "dataset_path": "json",
            "dataset_kwargs": {
                "data_files": {"test": str(data)},
                "cache_dir": str(self.workdir / "datasets_cache"),
            },
            "test_split": "test",
            **task.lm_eval_config(),
            "metadata": {"version": TASK_VERSION},
        }
        _write_if_changed(
            self.workdir / f"{task.name}.yaml", yaml.safe_dump(config, sort_keys=False)
        )


def lm_eval_version() -> str:
    return metadata.version("lm_eval")


def _task_scores(result: dict[str, Any]) -> dict[str, float]:
    """lm-eval's "metric,filter" entries as numbers; "name", "alias" and "N/A" stderrs dropped."""
    return {
        key.removesuffix(",none"): float(value)
        for key, value in result.items()
        if "," in key and not isinstance(value, str)
    }


def _group_by_lm_options(tasks: tuple[PerplexityTask, ...]) -> dict[tuple, list[str]]:
    """Task names by the HFLM options their kind needs: one HFLM and one lm-eval run each."""
    groups: dict[tuple, list[str]] = {}
    for task in tasks:
        groups.setdefault(tuple(sorted(task.lm_options.items())), []).append(task.name)
    return groups


def _go_offline() -> None:
    """Keep lm-eval's `datasets` from the network (it pings the Hub on every load_dataset).

    Both libraries read these variables once, at import, and transformers usually has
    imported huggingface_hub already, so set their flags as well as the variables.
    """
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def _quiet_lm_eval() -> None:
    logging.getLogger("lm_eval").setLevel(logging.WARNING)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _check_task_name(name: str) -> None:
    if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
        raise LwqError(
            f"bad task name {name!r}: use letters, digits, '_', '-' or '.', starting with "
            "a letter or digit (it names the task's files and lm-eval task)"
        )


def _check_tasks(tasks: list[PerplexityTask]) -> None:
    if not tasks:
        raise LwqError("no tasks given to the harness; pass at least one PerplexityTask")
    names = [task.name for task in tasks]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise LwqError(f"task names {twice} given more than once; names must be unique")


def _check_positive(**values: int | None) -> None:
    for key, value in values.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise LwqError(f"{key} must be a positive integer, got {value!r}")


def _check_context(model, max_length: int) -> None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise LwqError(
            f"max_length={max_length} exceeds the model's max_position_embeddings={limit}; "
            "lower the evaluation max_length"
        )
