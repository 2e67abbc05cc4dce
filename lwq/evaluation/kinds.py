"""Task kinds the harness can run: what documents a task has and which lm-eval YAML keys.

A kind says three things: its documents (`documents()`, written as jsonl; None = the
data set lm-eval itself names), its lm-eval YAML keys (`lm_eval_config()`; the harness
adds the task name and the dataset keys) and the HFLM options it needs (`lm_options`).

- `PerplexityTask`: lwq's own rolling-loglikelihood task over given texts.
- `BuiltinTask`: one of lm-eval's installed tasks (`include:` of its YAML), so the
  prompts, metrics and version are exactly lm-eval's; only the data may be ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lwq.errors import LwqError

TASK_VERSION = 1  # metadata.version of every PerplexityTask YAML; bump when the layout changes

# metric -> lm-eval aggregation (lm_eval/api/metrics.py); all three are lower-is-better.
_PERPLEXITY_METRICS = {
    "word_perplexity": "weighted_perplexity",
    "byte_perplexity": "weighted_perplexity",
    "bits_per_byte": "bits_per_byte",
}
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SPLITS = ("training", "validation", "test", "fewshot")


@dataclass(frozen=True)
class PerplexityTask:
    """Rolling log-likelihood (lm-eval `loglikelihood_rolling`) over `texts`, one document each.

    Scores match `lwq.evaluation.perplexity.perplexity` on the same texts: words are
    `re.split(r"\\s+")` pieces, bytes are UTF-8 bytes, every token is predicted once.
    """

    name: str
    texts: tuple[str, ...]

    num_fewshot: ClassVar[int] = 0
    split: ClassVar[str] = "test"
    # The prefix token (BOS, else EOS) already starts every text, so the tokenizer must not
    # add its own BOS: with HFLM's default (add_bos_token=None) a BOS-adding tokenizer puts
    # a second BOS into the scored tokens, and P(BOS | BOS) is added to the text's NLL.
    lm_options: ClassVar[dict[str, Any]] = {"add_bos_token": False}

    def __post_init__(self) -> None:
        check_task_name(self.name)
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
        """This kind's task YAML keys (the harness adds name and dataset)."""
        return {
            "test_split": self.split,
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            # The column name rather than "{{text}}": lm-eval literal_evals a rendered target
            # that looks like a list, so "[1, 2]" would become [1, 2] (Task.doc_to_target).
            "doc_to_target": "text",
            "metric_list": [
                {"metric": metric, "aggregation": aggregation, "higher_is_better": False}
                for metric, aggregation in _PERPLEXITY_METRICS.items()
            ],
            "metadata": {"version": TASK_VERSION},
        }


@dataclass(frozen=True)
class BuiltinTask:
    """lm-eval's installed task at `base_yaml`, on `docs` (local) or on its own data (hub).

    `split` is the split lm-eval evaluates ("test" or "validation"); local `docs` become
    that split and every other split is switched off (zero-shot needs none). With hub
    data (`docs=None`) and a `limit`, a seeded subset of `limit` document indices is
    evaluated (lm-eval's `samples`), the same at every call.
    """

    name: str
    base_yaml: Path
    split: str
    docs: tuple[dict, ...] | None = None
    limit: int | None = None
    seed: int = 0
    num_fewshot: int = 0  # examples in each prompt; with local docs, drawn from them

    lm_options: ClassVar[dict[str, Any]] = {}  # lm-eval's defaults, as its numbers are reported

    def __post_init__(self) -> None:
        check_task_name(self.name)
        if not Path(self.base_yaml).is_file():
            raise LwqError(f"task {self.name!r}: lm-eval task file {self.base_yaml} not found")
        if self.split not in ("validation", "test"):
            raise LwqError(f"task {self.name!r}: split must be validation or test")
        if self.docs is not None:
            object.__setattr__(self, "docs", tuple(self.docs))
            if not self.docs:
                raise LwqError(f"task {self.name!r} has no documents")
            if self.limit is not None:
                raise LwqError(f"task {self.name!r}: subset local docs before, not with limit")

    def documents(self) -> list[dict] | None:
        return None if self.docs is None else list(self.docs)

    def lm_eval_config(self) -> dict[str, Any]:
        """`include:` lm-eval's YAML; with local docs, only our split is left on."""
        config: dict[str, Any] = {"include": str(Path(self.base_yaml).resolve())}
        if self.docs is not None:
            config |= {f"{split}_split": None for split in _SPLITS}
            config[f"{self.split}_split"] = self.split
            if self.num_fewshot:  # lm-eval leaves the document itself out of its examples
                config["fewshot_split"] = self.split
        return config


@dataclass(frozen=True)
class UserTask:
    """A task the user defined in lm-eval's YAML format in `eval.include_path`: lm-eval
    reads it (and whatever data it names) as it is; lwq writes nothing for it."""

    name: str
    num_fewshot: int | None = None  # None: as its YAML says (0 if it says nothing)

    lm_options: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        check_task_name(self.name)

    def documents(self) -> None:
        return None

    def lm_eval_config(self) -> None:
        return None


def check_task_name(name: str) -> None:
    if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
        raise LwqError(
            f"bad task name {name!r}: use letters, digits, '_', '-' or '.', starting with "
            "a letter or digit (it names the task's files and lm-eval task)"
        )
