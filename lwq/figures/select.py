"""Which records a figure uses, and the performance number it reads from each.

Contracts (plots/README.md documents them for users):
- A model's records are `results/<model>/records.jsonl`. Only records of one *setting*
  are compared: the model identity (`config.model` path, revision, dtype) and the eval
  spec (`config.eval` without batch size and cross-check). The setting of the newest
  record wins; the others are counted and reported, never mixed in.
- A *curve* is one ordering: (`metric_canonical`, `reverse`, `quant`). Its members are
  sweeps (`sweep_id`); a metric with a `seed` setting (random; the record's
  `metric_settings.seed`, else `config.metric.settings.seed`) keeps the newest sweep per
  seed and is averaged over seeds with a min-max band, any other metric keeps its newest
  sweep. Within a sweep the newest record per `k` wins.
- Performance is `eval.tasks[<task>][<metric>]`, or `eval[<entry>][<metric>]` for
  entries beside the tasks (`average:acc`, `kl:mean`, `kl:top1_agreement`,
  `cross_check:token_perplexity`).
"""

from __future__ import annotations

import difflib
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from lwq.errors import LwqError
from lwq.results.store import RecordStore

# Change speed or extras, not the numbers every figure reads.
_NOT_IN_SETTING = ("batch_size", "cross_check", "kl", "kl_top_k")
_LOWER_IS_BETTER = ("perplexity", "bits_per_byte")


class MissingRecords(LwqError):
    """A figure cannot be drawn; the message names the records (and the run) it needs."""


def load_results(results_dir: Path) -> dict[str, list[dict] | LwqError]:
    """{model: records in file order, or the error that made them unreadable} for every
    `<results_dir>/<model>/records.jsonl`."""
    results = {}
    for path in sorted(Path(results_dir).glob("*/records.jsonl")):
        try:
            records = RecordStore(path).read()  # damaged lines are reported and left out
        except OSError as err:  # an unreadable file: report it, draw the other models
            results[path.parent.name] = LwqError(f"{path} cannot be read ({err})")
            continue
        results[path.parent.name] = [r for r in records if r.get("status", "ok") == "ok"]
    return results


def fill_from_committed(results: dict, committed: Path | None) -> list[str]:
    """Give each model without records in `results` the records committed under
    `committed` (experiments/records/, the README's figures); the models so filled."""
    if committed is None or not Path(committed).is_dir():
        return []
    filled = []
    for model, records in load_results(Path(committed)).items():
        if not results.get(model):
            results[model] = records
            filled.append(model)
    return filled


def setting_of(record: dict) -> str:
    """The model identity and eval spec of a record, as a canonical JSON string."""
    config = record.get("config", {})
    model = {k: config.get("model", {}).get(k) for k in ("path", "revision", "dtype")}
    spec = {k: v for k, v in config.get("eval", {}).items() if k not in _NOT_IN_SETTING}
    return json.dumps({"model": model, "eval": spec}, sort_keys=True)


def _eval_name(record: dict) -> str | None:
    return record.get("config", {}).get("eval", {}).get("name")


@dataclass
class ModelRecords:
    """The records of one model and one setting (the newest record's), in file order."""

    model: str
    records: list[dict]
    ignored: int = 0  # records of other settings

    @classmethod
    def newest_setting(
        cls, model: str, records: list[dict], eval_name: str | None = None
    ) -> ModelRecords:
        """Keep the setting of the newest record (of the eval suite `eval_name` if given)."""
        candidates = [r for r in records if eval_name in (None, _eval_name(r))]
        if not candidates:
            return cls(model, [], len(records))
        chosen = setting_of(candidates[-1])
        kept = [r for r in records if setting_of(r) == chosen]
        return cls(model, kept, len(records) - len(kept))

    def of_kind(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("kind") == kind]

    def describe(self) -> str:
        spec = json.loads(setting_of(self.records[-1]))["eval"] if self.records else {}
        eval_text = f"eval {spec.get('name')}, limit {spec.get('limit')}, seed {spec.get('seed')}"
        text = f"{self.model}: {len(self.records)} records ({eval_text})"
        if self.ignored:
            text += f"; ignored {self.ignored} records of other model/eval settings"
        return text


@dataclass(frozen=True)
class Perf:
    """One performance number per record: `<source>:<metric>` (see the module docstring)."""

    source: str
    metric: str
    scale: str = "auto"  # auto = log for perplexities; log; linear

    def value(self, record: dict) -> float | None:
        """The number, or None when the record does not carry it (or it is not finite)."""
        evaluation = record.get("eval") or {}
        group = evaluation.get("tasks", {}).get(self.source, evaluation.get(self.source))
        value = group.get(self.metric) if isinstance(group, dict) else None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok and math.isfinite(value) else None

    @property
    def is_kl(self) -> bool:
        """KL divergence to the unquantized model (`kl:mean`, `kl:p99`)."""
        return self.source == "kl" and self.metric in ("mean", "p99")

    @property
    def lower_is_better(self) -> bool:
        return self.is_kl or any(word in self.metric for word in _LOWER_IS_BETTER)

    @property
    def log_scale(self) -> bool:
        """Perplexities and KL divergences are compared on a log scale (ratios matter)."""
        auto = "perplexity" in self.metric or self.is_kl
        return self.scale == "log" or (self.scale == "auto" and auto)

    def axis_label(self) -> str:
        better = "lower" if self.lower_is_better else "higher"
        if self.source == "kl":
            what = {"mean": "mean KL", "p99": "99th-percentile KL"}.get(self.metric, self.metric)
            return f"{what.replace('_', ' ')} to the unquantized model\n({better} is better)"
        source = self.source.removeprefix("lwq_")
        return f"{self.metric.replace('_', ' ')} on {source}\n({better} is better)"

    def __str__(self) -> str:
        return f"{self.source}:{self.metric}"


def available_perfs(records: list[dict]) -> list[str]:
    """Every `source:metric` with a number in at least one record, sorted."""
    found = set()
    for r in records:
        evaluation = r.get("eval") or {}
        groups = dict(evaluation.get("tasks", {}))
        groups |= {k: v for k, v in evaluation.items() if k != "tasks" and isinstance(v, dict)}
        for source, metrics in groups.items():
            found |= {f"{source}:{m}" for m in metrics if Perf(source, m).value(r) is not None}
    return sorted(found)


def parse_perf(spec: str | None, records: list[dict]) -> Perf:
    """`task:metric`, `average:acc`, ...; None or "ppl" = the eval task's byte perplexity.

    Raises LwqError naming the available choices when no record carries the number.
    """
    known = available_perfs(records)
    if spec in (None, "ppl"):
        return _default_perf(records, known)
    source, sep, metric = spec.partition(":")
    if not sep or not metric:
        raise LwqError(f"--perf {spec!r}: expected <task>:<metric>; known: {', '.join(known)}")
    for candidate in (source, f"lwq_{source}"):  # the lwq_ prefix may be left out
        if f"{candidate}:{metric}" in known:
            return Perf(candidate, metric)
    close = difflib.get_close_matches(spec, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise LwqError(f"no record carries {spec!r}{hint}; known: {', '.join(known) or 'none'}")


def _default_perf(records: list[dict], known: list[str]) -> Perf:
    """The byte perplexity of an eval task, else any task perplexity, else `average:*`."""
    if not known:
        raise MissingRecords("no record carries an evaluation result")
    tasks = {t for r in records for t in (r.get("eval") or {}).get("tasks", {})}
    in_tasks = [k for k in known if k.partition(":")[0] in tasks]
    ranked = (
        [k for k in in_tasks if k.endswith(":byte_perplexity")]
        + [k for k in in_tasks if "perplexity" in k]
        + [k for k in known if k.startswith("average:")]
        + known
    )
    source, _, metric = ranked[0].partition(":")
    return Perf(source, metric)


@dataclass
class Curve:
    """One ordering's performance per k; `band` is (min, max) per k over seeds or None."""

    metric: str
    reverse: bool
    quant: dict
    ks: list[int] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    band: tuple[list[float], list[float]] | None = None
    weight_bytes: list[float] = field(default_factory=list)
    n_blocks: int = 0
    seeds: list = field(default_factory=list)


def _high(record: dict) -> int | None:
    """The bits of the kept blocks; pruned records may carry them only in the config."""
    return record.get("high", record.get("config", {}).get("sweep", {}).get("high"))


def _seed(record: dict):
    """The seed of a record's ordering: `metric_settings` (one run may sweep several seeds
    with `metric.seeds`), else the configured `metric.settings.seed`; None if unseeded."""
    settings = record.get("metric_settings")
    if settings is None:
        settings = record.get("config", {}).get("metric", {}).get("settings", {})
    return settings.get("seed")


def _curve_key(record: dict) -> tuple:
    quant = json.dumps(record.get("quant", {}), sort_keys=True)
    return (record.get("metric_canonical"), bool(record.get("reverse")), quant)


def sweep_curves(
    records: list[dict], perf: Perf, *, kind: str, high: int, low: int | None = None
) -> tuple[list[Curve], list[str]]:
    """The curves of `kind` records with these bits (low=None: any), and notes on what
    was left out. Records without the performance number are left out."""
    chosen = [
        r
        for r in records
        if r.get("kind") == kind
        and _high(r) == high
        and (low is None or r.get("low") == low)
        and perf.value(r) is not None
    ]
    sweeps: dict[tuple, dict[str, list[dict]]] = defaultdict(dict)
    for r in chosen:  # file order: a later sweep_id lands later in the dict
        sweep_id = r.get("sweep_id") or json.dumps([*_curve_key(r), _seed(r)])
        sweeps[_curve_key(r)].setdefault(sweep_id, []).append(r)
    curves, notes = [], []
    for key, by_sweep in sweeps.items():
        newest: dict = {}
        for sweep_records in by_sweep.values():
            newest[_seed(sweep_records[0])] = sweep_records  # newest sweep per seed
        if len(by_sweep) > len(newest):
            dropped = len(by_sweep) - len(newest)
            notes.append(f"{key[0]}: kept the newest sweep, ignored {dropped} older")
        curves.append(_aggregate(key, list(newest.items()), perf))
    return sorted(curves, key=curve_order), notes


def _aggregate(key: tuple, members: list[tuple], perf: Perf) -> Curve:
    metric, reverse, quant = key
    per_k: dict[int, list[float]] = defaultdict(list)
    size: dict[int, float] = {}
    n_blocks = 0
    for _, sweep_records in members:
        last = {r["k"]: r for r in sweep_records}  # newest record per k
        for k, r in last.items():
            per_k[k].append(perf.value(r))
            size[k] = r.get("weight_bytes", float("nan"))
            n_blocks = r.get("n_blocks", n_blocks)
    ks = sorted(per_k)
    curve = Curve(metric, reverse, json.loads(quant), ks, n_blocks=n_blocks)
    curve.mean = [statistics.fmean(per_k[k]) for k in ks]
    curve.weight_bytes = [size[k] for k in ks]
    curve.seeds = sorted((seed for seed, _ in members), key=str)
    if len(members) > 1:
        curve.band = ([min(per_k[k]) for k in ks], [max(per_k[k]) for k in ks])
    return curve


_METRIC_ORDER = ("ldi", "zd", "random", "position")


def curve_order(curve: Curve) -> tuple:
    """Legend order: LIM, ZD, random, position, others by name; reversed ones last."""
    rank = _METRIC_ORDER.index(curve.metric) if curve.metric in _METRIC_ORDER else 99
    return (curve.reverse, rank, str(curve.metric), json.dumps(curve.quant, sort_keys=True))


def reference_value(mr: ModelRecords, perf: Perf) -> float | None:
    """The unquantized model's number (the newest `kind: reference` record), or None."""
    values = [perf.value(r) for r in mr.of_kind("reference")]
    values = [v for v in values if v is not None]
    return values[-1] if values else None


def newest_rankings(mr: ModelRecords) -> dict[str, dict]:
    """{canonical metric: {"scores", "ranking", "higher_is_important"}} from the newest
    non-reference record of each metric; `ranking` is least -> most important and is
    un-reversed for records of a reversed sweep."""
    found = {}
    for r in mr.records:
        if r.get("kind") == "reference" or "ranking" not in r:
            continue
        ranking = list(r["ranking"])
        found[r["metric_canonical"]] = {
            "scores": list(r["scores"]),
            "ranking": ranking[::-1] if r.get("reverse") else ranking,
            "higher_is_important": bool(r.get("higher_is_important", True)),
        }
    return found
