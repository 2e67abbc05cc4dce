"""The evaluation suite of a sweep: prepared once, then run on every model variant.

A suite (`conf/eval/<name>.yaml`) has up to two parts:
- `text`: held-out perplexity of a named text (lwq.texts) through lm-eval's rolling
  loglikelihood, cross-checked by lwq's own `perplexity()` (the `ppl` suite);
- `tasks`: lm-eval's own benchmarks (lwq.evaluation.tasks) on local or hub data, each
  cut to a seeded subset of `limit` documents (`limits` overrides it per task).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lwq.data import chunk_documents, load_texts, seeded_subset, source_files
from lwq.errors import LwqError
from lwq.evaluation import dummy
from lwq.evaluation.divergence import KLMeter, ReferenceTopK, TopKCollector
from lwq.evaluation.harness import Harness, PerplexityTask, lm_eval_version
from lwq.evaluation.index import load_index
from lwq.evaluation.local_data import FILES, local_files
from lwq.evaluation.perplexity import perplexity, token_windows
from lwq.evaluation.tasks import averaged, resolve_tasks, user_task_names
from lwq.runtime import digest

CROSS_CHECK_TOLERANCE = 1e-3  # relative; float32 batching noise is ~1e-6
KL_VERSION = 1  # of the stored reference's layout; bump when it changes
AVERAGED_METRICS = ("acc", "acc_norm")


@dataclass(frozen=True)
class EvalSpec:
    """What is evaluated; every field changes the numbers, so all go into record keys.
    The evaluation's input, built and checked by the config (lwq.config.checks).

    `text` None = no held-out perplexity task; `tasks` are lm-eval task, group or tag names
    (may be empty); `limit` is documents per task (None = all), `limits` {task: limit}
    overrides; `num_fewshot` {task: n} (default 0); `include_path` a directory of the
    user's own lm-eval task YAMLs; `local` {task: {file, fields}} local data for any task.
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
    num_fewshot: dict[str, int] = field(default_factory=dict)
    include_path: str | None = None
    local: dict[str, dict] = field(default_factory=dict)
    dtype: str = "float32"  # bfloat16: the evaluation's forwards under bf16 autocast

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        # A preset's per-task limits are defaults: those of tasks not swept are dropped,
        # so `eval=quick eval.tasks=[piqa]` works without also clearing eval.limits.
        limits = {t: n for t, n in (self.limits or {}).items() if t in self.tasks}
        object.__setattr__(self, "limits", limits)
        object.__setattr__(self, "num_fewshot", dict(self.num_fewshot or {}))
        object.__setattr__(self, "local", dict(self.local or {}))

    def identity(self) -> dict:
        """The fields as data for keys; settings added later are left out while unset, so
        the keys of records written before them stay the same."""
        out = asdict(self)
        for key in ("num_fewshot", "include_path", "local"):
            if not out[key]:
                del out[key]
        if out["dtype"] == "float32":
            del out["dtype"]
        return out

    def limit_for(self, task: str) -> int | None:
        return self.limits.get(task, self.limit)

    def digest(self) -> str:
        return digest(self.identity(), 12)


CROSS_CHECKS = ("reference", "all", "none")
# Who scores the held-out text on quantized points: lm-eval's rolling log-likelihood, or
# lwq's own pass (the one KL needs anyway), which agrees with lm-eval to ~1e-7 and is
# cross-checked against it on the unquantized model; then each point runs the text once.
TEXT_ENGINES = ("lm-eval", "lwq")


class Suite:
    """lm-eval on the prepared tasks; on the held-out text also lwq's own perplexity pass,
    which measures the KL divergence from the unquantized model and cross-checks lm-eval.

    All data is read, converted and subset by `prepare()`, once (the constructor does no
    I/O and checks nothing the config checked already); `workdir/<spec digest>/` holds
    the suite's task files, so suites of parallel jobs never overwrite each other's.
    `cross_check` says on which points lwq's own pass runs when no KL needs it:
    `reference` (the unquantized model), `all` or `none`. `kl_top_k` (None = no KL) is
    the number of reference log-probabilities kept per token (lwq.evaluation.divergence).
    """

    def __init__(
        self,
        spec: EvalSpec,
        *,
        data_dir: Path,
        workdir: Path,
        batch_size: int,
        cross_check: str = "reference",
        kl_top_k: int | None = None,
        verbose: bool = False,
        text_by: str = "lm-eval",
        logits_memory: float | None = None,
    ) -> None:
        self.spec = spec
        self.data_dir = Path(data_dir)
        self.workdir = Path(workdir)
        self.batch_size = batch_size
        self.verbose = verbose
        self.text_by = text_by
        self.logits_memory = logits_memory
        self.cross_check = cross_check if spec.text else "none"
        self.kl_top_k = kl_top_k if spec.text else None
        self.reference: ReferenceTopK | None = None
        self.texts: list[str] = []
        self.task_name = None
        self._counts: dict[str, int] = {}
        self.requested = None
        self.harness = None

    def prepare(self) -> Suite:
        """Read, convert and subset the data and prepare the tasks, once (the suite's only
        I/O); an unknown task or a missing file stops here, before any model loads."""
        spec = self.spec
        tasks = []
        if spec.text:
            chunks = chunk_documents(load_texts(spec.text, self.data_dir), spec.chunk_chars)
            self.texts = seeded_subset(chunks, spec.limit, spec.seed)
            self.task_name = text_task_name(spec.name, spec.text)
            tasks.append(PerplexityTask(self.task_name, tuple(self.texts)))
        include = Path(spec.include_path).expanduser() if spec.include_path else None
        self.requested = resolve_tasks(
            spec.tasks,
            source=spec.source,
            data_dir=self.data_dir,
            limits=spec.limits,
            default_limit=spec.limit,
            seed=spec.seed,
            num_fewshot=spec.num_fewshot,
            local=spec.local,
            user_tasks=user_task_names(include),
            index=lambda: load_index(),
        )
        tasks += self.requested.tasks
        if spec.name == dummy.NAME:  # numbers from the weights, no lm-eval (lwq.evaluation.dummy)
            self.harness = dummy.DummyHarness(tasks)
            return self
        self.harness = Harness(
            tasks,
            workdir=self.workdir / spec.digest(),
            batch_size=self.batch_size,
            max_length=spec.max_length,
            bootstrap_iters=spec.bootstrap_iters,
            verbose=self.verbose,
            include_path=include,
            logits_memory=self.logits_memory,
            autocast=None if spec.dtype == "float32" else spec.dtype,
        ).prepare()
        return self

    def prepare_reference(self, model, tokenizer, cache: Path) -> None:
        """The unquantized model's top-k distributions on the held-out text, for KL: read
        from `cache` (a file per model and suite) or computed now on `model`, which must be
        the model as loaded."""
        if self.kl_top_k is None or self.reference is not None:
            return
        if cache.is_file():
            self.reference = ReferenceTopK.load(cache)
            return
        collector = TopKCollector(self.kl_top_k)
        with self._autocast(model):
            self._text_pass(model, tokenizer, collector)
        self.reference = collector.result()
        self.reference.save(cache)

    def _text_pass(self, model, tokenizer, each):
        """lwq's own pass over the held-out text, `each` seeing its log-probabilities."""
        return perplexity(
            model,
            tokenizer,
            self.texts,
            max_length=self.spec.max_length,
            batch_size=self.batch_size,
            each=each,
            logits_memory=self.logits_memory,
        )

    def _autocast(self, model):
        """bf16 autocast on the model's device for `eval.dtype=bfloat16`, else nothing."""
        if self.spec.dtype != "bfloat16":
            return contextlib.nullcontext()
        device = next(model.parameters()).device.type
        return torch.autocast(device_type=device, dtype=torch.bfloat16)

    def evaluate(self, model, tokenizer, *, reference_point: bool = False, reuse=None) -> dict:
        """Every measure of the suite on `model` (under `eval.dtype`'s autocast)."""
        with self._autocast(model):
            return self._evaluate(model, tokenizer, reference_point=reference_point, reuse=reuse)

    def _evaluate(self, model, tokenizer, *, reference_point: bool, reuse) -> dict:
        """{"tasks": {task: {metric: value, metric_stderr: value}},
        "average": {"acc": mean, "acc_norm": mean} or None,
        "kl": {"mean", "p99", "top1_agreement", "tokens", "top_k"} or None,
        "cross_check": {...} or None}.

        The held-out text's task also gets `token_perplexity`: lm-eval's own log-likelihood
        per token (its word perplexity renormalised by the tokens of the same texts).
        `reuse()`, if given, is the context the held-out text's passes run in (lm-eval's and
        lwq's): prefix reuse (lwq.modeling.prefix); the accuracy tasks run without it.
        """
        by_lwq = self.text_by == "lwq" and self.task_name is not None and not reference_point
        skip = {self.task_name} if by_lwq else set()
        tasks = self.harness.evaluate(
            model, tokenizer, desc=f"eval {self.spec.name}", skip=skip, rolling=reuse
        )
        if self.task_name and not by_lwq:
            tasks[self.task_name]["token_perplexity"] = self._token_perplexity(
                tasks[self.task_name], tokenizer
            )
        wanted = self.cross_check == "all" or (self.cross_check == "reference" and reference_point)
        check = kl = None
        if self.kl_top_k is not None or wanted or by_lwq:
            if self.kl_top_k is not None and self.reference is None:
                raise LwqError("the KL reference is not prepared; call prepare_reference first")
            meter = KLMeter(self.reference) if self.kl_top_k is not None else None
            with reuse() if reuse else contextlib.nullcontext():
                ppl = self._text_pass(model, tokenizer, meter)
            if by_lwq:
                tasks[self.task_name] = {k: v for k, v in ppl.as_dict().items() if k != "tokens"}
            else:
                check = self._cross_check(ppl, tasks[self.task_name])
            kl = meter.stats() if meter else None
        leaves = dict(tasks)
        tasks |= self._groups(leaves)
        text_by = ("lwq" if by_lwq else "lm-eval") if self.task_name else None
        return {
            "tasks": tasks,
            "average": average(leaves),
            "kl": kl,
            "cross_check": check,
            "text_by": text_by,
        }

    def _groups(self, leaves: dict[str, dict]) -> dict[str, dict]:
        """Each requested group's numbers, aggregated over its tasks as lm-eval does
        (its own aggregate_subtask_metrics and pooled stderr, by size where it weighs)."""
        if not self.requested.groups:
            return {}
        from lm_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr

        sizes = self.harness.items()
        out: dict[str, dict] = {}

        def numbers(name: str) -> tuple[dict, int]:
            if name in leaves:
                return leaves[name], sizes[name]
            group = self.requested.groups[name]
            entry = group.entry
            parts = [numbers(part) for part in group.parts]
            result = {}
            for metric in entry.aggregate:
                have = [(m[metric], m.get(f"{metric}_stderr"), n) for m, n in parts if metric in m]
                if not have:
                    continue
                values, stderrs, counts = zip(*have, strict=True)
                result[metric] = aggregate_subtask_metrics(values, counts, entry.weight_by_size)
                if all(e is not None for e in stderrs):
                    result[f"{metric}_stderr"] = pooled_sample_stderr(stderrs, counts)
            out[name] = result
            return result, sum(n for _, n in parts)

        for name in self.requested.groups:
            if name not in out:
                numbers(name)
        return out

    def _cross_check(self, ppl, lm_eval_metrics: dict) -> dict:
        check = ppl.as_dict()
        lm_eval_value = lm_eval_metrics["byte_perplexity"]
        check["relative_difference"] = abs(ppl.byte_perplexity / lm_eval_value - 1)
        check["agrees"] = check["relative_difference"] <= CROSS_CHECK_TOLERANCE
        return check

    def _token_perplexity(self, metrics: dict, tokenizer) -> float:
        """exp(NLL / tokens) from lm-eval's exp(NLL / words): the same NLL, counted per token
        (tokens as lm-eval and perplexity() tokenize each text: no special tokens)."""
        if not self._counts:
            windows = token_windows(tokenizer, self.texts, self.spec.max_length)
            self._counts["tokens"] = sum(len(t) for _, t in windows)
            self._counts["words"] = sum(len(re.split(r"\s+", text)) for text in self.texts)
        nll = math.log(metrics["word_perplexity"]) * self._counts["words"]
        return math.exp(nll / self._counts["tokens"])

    def data_files(self) -> list[Path]:
        """Every local file the suite's documents were read from (records hash them)."""
        files = source_files(self.spec.text, self.data_dir) if self.spec.text else []
        if self.spec.source == "local":
            for task in self.requested.tasks:
                if task.name in self.spec.local:
                    files.append(Path(str(self.spec.local[task.name]["file"])).expanduser())
                elif task.name in FILES:
                    files += local_files(task.name, self.data_dir)
        return sorted(set(files))

    def identity(self) -> dict:
        """What changes the numbers, as plain data for record keys: the spec."""
        return self.spec.identity()

    def kl_key(self) -> dict | None:
        """What the KL reference depends on besides the model (None without KL)."""
        if self.kl_top_k is None:
            return None
        return {"eval": self.identity(), "top_k": self.kl_top_k, "version": KL_VERSION}

    def provenance(self) -> dict:
        """How the numbers were made: lm-eval and task versions, data source, item counts."""
        out = {
            "lm_eval_version": lm_eval_version(),
            "task_versions": self.harness.task_versions(),
            "num_fewshot": self.harness.fewshot(),
            "items": self.harness.items(),
            "bootstrap_iters": self.spec.bootstrap_iters,
        }
        if self.spec.tasks:
            out["source"] = self.spec.source
        if self.texts:
            out |= {
                "text": self.spec.text,  # a file: source keeps its path here
                "documents": len(self.texts),
                "characters": sum(len(t) for t in self.texts),
            }
        if self.kl_top_k is not None:
            out["kl_top_k"] = self.kl_top_k
        return out


def text_task_name(suite: str, source: str) -> str:
    """The lm-eval task name of a held-out text: readable for named sources, a short hash of
    the path for `file:` sources (a path may hold any character; the record keeps it)."""
    if source.startswith("file:"):
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:10]
        return f"lwq_{suite}_file_{digest}"
    return f"lwq_{suite}_{source}".replace("-", "_")


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
