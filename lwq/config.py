"""The run's configuration: Hydra's composed config turned, once, into typed frozen specs.

The only lwq module that imports omegaconf or hydra (ruff's banned-api rule enforces it).
`from_hydra(cfg)` checks everything that can be checked without loading a model, data or
a quantizer library, so bad input stops with one line before anything heavy starts; the
commands pass these specs, or plain values taken from them, down to the library.
Checks that need the checkpoint's own config (its context length, its number of blocks)
are made by `lwq.commands.context` after reading `config.json`, before the weights load.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lwq.data import check_text_source
from lwq.errors import LwqError
from lwq.evaluation.divergence import TOP_K
from lwq.evaluation.suite import CROSS_CHECKS, TEXT_ENGINES, EvalSpec
from lwq.export.gguf_file import BASE_TYPES, EMBEDDING_TYPES, GgufExport, read_types
from lwq.metrics import METRICS
from lwq.plan import Plan, blocks_for_fraction, read_plan_file
from lwq.quant import BACKENDS, check_bits, make_backend
from lwq.quant.base import FULL_PRECISION
from lwq.runtime import PROJECT_ROOT, pick_device, resolve_path

CONF_DIR = PROJECT_ROOT / "conf"
COMMANDS = ("sweep", "scores", "compare", "export")
DTYPES = ("auto", "float32", "float16", "bfloat16")
BASELINES = ("none", "prune")
EXPORT_FORMATS = ("gguf", "gptq")
TRACKERS = ("wandb", "none")


@dataclass(frozen=True)
class ModelShape:
    """A model's shapes as conf/model/<name>.yaml gives them: enough to build it on the meta
    device (no weights) when its config.json cannot be read (a dry run on a laptop)."""

    model_type: str
    shrink_as: str  # a transformers family with the same layout (the tests' shrunk copies)
    blocks: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    context: int
    tie_word_embeddings: bool


@dataclass(frozen=True)
class ModelSpec:
    """Which checkpoint, how it is loaded, and its default texts and window."""

    name: str
    path: str  # hub id or local directory, as written (part of every key)
    revision: str | None
    trust_remote_code: bool
    allow_pickle: bool  # also load pickle (.bin) weights; default safetensors only
    dtype: str
    max_length: int  # tokens per perplexity window
    calib_text: str
    eval_text: str
    shape: ModelShape | None = None  # None when the conf gives no shapes
    gguf_file: str | None = None  # a GGUF file in `path` to load (dequantized) instead
    make: str | None = None  # the command that builds a local checkpoint (e.g. make smollm2)

    def identity(self) -> dict:
        """What the numbers depend on: goes into every key."""
        identity = {
            "name": self.name,
            "path": self.path,
            "revision": self.revision,
            "dtype": self.dtype,
        }
        return identity | ({"gguf_file": self.gguf_file} if self.gguf_file else {})


@dataclass(frozen=True)
class CalibSpec:
    """Calibration windows: `samples` windows of `seq_len` tokens drawn with `seed`."""

    text: str
    samples: int
    seq_len: int
    seed: int

    def identity(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MetricSpec:
    """An importance metric and its settings (a plain dict, read-only by convention)."""

    name: str
    settings: dict
    reverse: bool = False
    seeds: int = 1  # random: orders for seeds settings.seed, settings.seed + 1, ...

    def variants(self) -> list[MetricSpec]:
        """One spec per seed when several seeds are asked for, else this one."""
        if self.seeds == 1:
            return [self]
        first = self.settings["seed"]
        return [
            MetricSpec(self.name, self.settings | {"seed": first + i}, self.reverse)
            for i in range(self.seeds)
        ]


@dataclass(frozen=True)
class QuantSpec:
    """A backend name and its settings as configured (`eval_dequantized: auto` kept)."""

    name: str
    settings: dict

    def as_config(self) -> dict:
        """The `quant` node as a metric that quantizes names it in its score key."""
        return {"name": self.name, "settings": dict(self.settings)}


@dataclass(frozen=True)
class EvalConfig:
    spec: EvalSpec  # what is evaluated (every field changes the numbers)
    batch_size: int  # speed only
    cross_check: str  # where lwq's own perplexity pass runs without KL: reference | all | none
    kl_top_k: int | None  # KL divergence to the unquantized model; None = off
    text_by: str = "lm-eval"  # speed only: who scores the held-out text on quantized points


@dataclass(frozen=True)
class SweepSpec:
    high: int
    low: int
    fractions: tuple[float, ...] | None
    blocks: tuple[int, ...] | None
    reference: bool


@dataclass(frozen=True)
class BudgetSpec:
    """The exact allocator's target: average bits or whole-model bytes, and its menu."""

    avg_bits: float | None
    bytes: int | None
    allowed_bits: tuple[int, ...]

    @property
    def wanted(self) -> bool:
        return self.avg_bits is not None or self.bytes is not None


@dataclass(frozen=True)
class ExportSpec:
    """`python run.py export`: which plan (k blocks low by the metric's order, unless a
    plan file or a budget gives it), where the file goes, and the llama.cpp check."""

    format: str  # gguf | gptq
    k: int | None
    out: Path | None
    gguf: GgufExport
    check: bool
    check_chunks: int
    check_ctx: int | None  # None: the model's max_length


@dataclass(frozen=True)
class PathsSpec:
    results: Path
    cache: Path
    data: Path


@dataclass(frozen=True)
class TrackingSpec:
    name: str
    project: str | None = None
    mode: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything one `python run.py ...` asked for, checked."""

    command: str
    device: str
    dry_run: bool  # print what the command would do; load no weights
    seed: int
    verbose: bool  # lm-eval's own progress bars and warnings
    model: ModelSpec
    calib: CalibSpec
    metric: MetricSpec
    quant: QuantSpec
    eval: EvalConfig
    sweep: SweepSpec
    baseline: str
    budget: BudgetSpec
    plan_file: Path | None
    manual_plan: Plan | None
    compare_metrics: tuple[MetricSpec, ...]
    sensitivity: MetricSpec  # sensitivity.yaml's defaults for this run (bits = sweep.low)
    paths: PathsSpec
    tracking: TrackingSpec
    plain: dict  # the resolved config as JSON-able data, stored in every record
    export: ExportSpec | None = None  # `command=export` only


def compose_run(*overrides: str) -> RunConfig:
    """The checked RunConfig of `python run.py <overrides>` (tests, bench, run.py's check)."""
    return from_hydra(compose_config(*overrides))


def compose_config(*overrides: str) -> DictConfig:
    """The composed Hydra config; composition errors become one-line LwqErrors."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise LwqError(hydra_message(err)) from err


def hydra_message(err: Exception) -> str:
    """Hydra's several-line composition error as one line naming the fix."""
    text = str(err).strip()
    missing = re.search(r"Could not find '([\w-]+)/([^']*)'", text)
    if missing:
        group, option = missing.groups()
        known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        close = difflib.get_close_matches(option, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {group} {option!r}{hint}; known: {', '.join(known)} (conf/{group}/)"
    struct = re.search(r"Could not override '([^']+)'", text)
    if struct:
        return (
            f"unknown config key {struct.group(1)!r}; the keys are in conf/config.yaml and conf/*/"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(err).__name__


def from_hydra(cfg: DictConfig) -> RunConfig:
    """Check and type the composed config. Raises LwqError (one line) on bad input."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise LwqError(f"config does not resolve: {str(err).splitlines()[0]}") from err
    command = _choice(plain["command"], COMMANDS, "command")
    device = _device(plain["device"])
    model = _model(plain["model"])
    calib = _calib(plain["calib"])
    quant = _quant(plain["quant"])
    sweep = _sweep(plain["sweep"], quant)
    metric = _metric(plain["metric"], "metric")
    budget = _budget(plain, quant)
    plan_file, manual_plan = _plan_file(plain["plan_file"], quant)
    return RunConfig(
        command=command,
        device=device,
        dry_run=bool(plain.get("dry_run", False)),
        seed=_int(plain.get("seed", 0), "seed"),
        verbose=bool(plain.get("verbose", False)),
        model=model,
        calib=calib,
        metric=metric,
        quant=quant,
        eval=_eval(plain["eval"]),
        sweep=sweep,
        baseline=_choice(plain["baseline"]["name"], BASELINES, "baseline"),
        budget=budget,
        plan_file=plan_file,
        manual_plan=manual_plan,
        compare_metrics=tuple(
            default_metric(cfg, name, "compare_metrics") for name in plain["compare_metrics"]
        ),
        # checked only where it is measured (sweep.low=16 makes its default bits 16)
        sensitivity=default_metric(cfg, "sensitivity", "sensitivity", check=command == "compare"),
        paths=PathsSpec(
            results=resolve_path(plain["paths"]["results"]),
            cache=resolve_path(plain["paths"]["cache"]),
            data=resolve_path(plain["paths"]["data"]),
        ),
        tracking=_tracking(plain["tracking"]),
        plain=plain,
        export=_export(plain["export"], quant) if command == "export" else None,
    )


def default_metric(cfg: DictConfig, name: str, key: str, check: bool = True) -> MetricSpec:
    """Metric `name` with the settings of conf/metric/<name>.yaml, resolved against this run
    (so `${sweep.low}` in sensitivity.yaml means this run's low bit-width)."""
    path = CONF_DIR / "metric" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "metric").glob("*.yaml"))
        raise LwqError(f"{key} names metric {name!r}; known: {', '.join(known)}")
    root = OmegaConf.to_container(cfg, resolve=False)
    root["metric"] = OmegaConf.to_container(OmegaConf.load(path))
    node = OmegaConf.to_container(OmegaConf.create(root).metric, resolve=True)
    return _metric(node, key, check)


def _model(node: dict) -> ModelSpec:
    _choice(node["dtype"], DTYPES, "model.dtype")
    check_text_source(node["calib_text"], "model.calib_text")
    check_text_source(node["eval_text"], "model.eval_text")
    return ModelSpec(
        name=_name(node["name"], "model.name"),
        path=str(node["path"]),
        revision=node.get("revision"),
        trust_remote_code=bool(node.get("trust_remote_code", False)),
        allow_pickle=bool(node.get("allow_pickle", False)),
        dtype=node["dtype"],
        max_length=_positive_int(node["max_length"], "model.max_length"),
        calib_text=node["calib_text"],
        eval_text=node["eval_text"],
        shape=_shape(node),
        gguf_file=node.get("gguf_file"),
        make=node.get("make"),
    )


def _shape(node: dict) -> ModelShape | None:
    names = [f.name for f in fields(ModelShape)]
    if any(node.get(name) is None for name in names):
        return None
    return ModelShape(**{name: node[name] for name in names})


def _calib(node: dict) -> CalibSpec:
    check_text_source(node["text"], "calib.text")
    seq_len = _positive_int(node["seq_len"], "calib.seq_len")
    if seq_len < 2:
        raise LwqError("calib.seq_len=1 leaves no next token to predict; use 2 or more")
    return CalibSpec(
        text=node["text"],
        samples=_positive_int(node["samples"], "calib.samples"),
        seq_len=seq_len,
        seed=_int(node["seed"], "calib.seed"),
    )


def _metric(node: dict, key: str, check: bool = True) -> MetricSpec:
    name = node["name"]
    metric = METRICS.get(name)
    settings = dict(node.get("settings") or {})
    accepted = metric.setting_names()
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise LwqError(
            f"{key}: {', '.join(unknown)} is not a setting of metric {name}; "
            f"it takes: {', '.join(accepted) or 'none'}"
        )
    if check:
        metric.check(settings)
    seeds = _positive_int(node.get("seeds", 1), f"{key}.seeds")
    if seeds > 1 and "seed" not in settings:
        raise LwqError(f"{key}.seeds={seeds}: metric {name} has no seed; drop {key}.seeds")
    return MetricSpec(name, settings, bool(node.get("reverse", False)), seeds)


def _quant(node: dict) -> QuantSpec:
    name = node["name"]
    settings = dict(node.get("settings") or {})
    backend_type = BACKENDS.get(name)
    accepted = [p for p in inspect.signature(backend_type.__init__).parameters if p != "self"]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise LwqError(
            f"quant.settings: {', '.join(unknown)} is not a setting of quant={name}; "
            f"it takes: {', '.join(accepted)}"
        )
    make_backend(name, **settings)  # each backend checks its own values
    return QuantSpec(name, settings)


def _sweep(node: dict, quant: QuantSpec) -> SweepSpec:
    backend = make_backend(quant.name, **quant.settings)
    high = _int(node["high"], "sweep.high")
    low = _int(node["low"], "sweep.low")
    check_bits(backend, high)
    check_bits(backend, low)
    if low > high:
        raise LwqError(f"sweep.low={low} is above sweep.high={high}; swap them")
    fractions = node.get("fractions")
    blocks = node.get("blocks")
    if fractions is not None:
        fractions = tuple(float(f) for f in fractions)
        for fraction in fractions:
            blocks_for_fraction(fraction, 1)  # refuses a fraction outside [0, 1]
    if blocks is not None:
        blocks = tuple(_int(k, "sweep.blocks") for k in blocks)
        negative = [k for k in blocks if k < 0]
        if negative:
            raise LwqError(f"sweep.blocks has {negative}; numbers of low blocks are 0 or more")
    elif not fractions:
        raise LwqError("sweep.fractions is empty; give e.g. [0, 0.5, 1] or set sweep.blocks")
    return SweepSpec(high, low, fractions, blocks, bool(node.get("reference", True)))


def _budget(plain: dict, quant: QuantSpec) -> BudgetSpec:
    avg_bits, size = plain.get("budget"), plain.get("budget_bytes")
    allowed = tuple(sorted(_int(b, "allowed_bits") for b in plain.get("allowed_bits") or []))
    if avg_bits is not None and size is not None:
        raise LwqError("give either budget (average bits) or budget_bytes, not both")
    if avg_bits is not None and not 0 < float(avg_bits) <= FULL_PRECISION:
        raise LwqError(f"budget={avg_bits} average bits is outside (0, 16]; e.g. budget=3.25")
    if size is not None:
        size = _positive_int(size, "budget_bytes")
    spec = BudgetSpec(None if avg_bits is None else float(avg_bits), size, allowed)
    if spec.wanted:
        if not allowed:
            raise LwqError("allowed_bits is empty; give the allocator widths, e.g. [2, 3, 4, 8]")
        backend = make_backend(quant.name, **quant.settings)
        for bits in allowed:
            check_bits(backend, bits)
        if FULL_PRECISION in allowed:
            raise LwqError("allowed_bits must not contain 16 (measured against the 16-bit model)")
    return spec


def _plan_file(value, quant: QuantSpec) -> tuple[Path | None, Plan | None]:
    if not value:
        return None, None
    path = resolve_path(value)
    plan = read_plan_file(path)
    backend = make_backend(quant.name, **quant.settings)
    for bits in sorted(set(plan.bits)):
        check_bits(backend, bits)
    return path, plan


def _export(node: dict, quant: QuantSpec) -> ExportSpec:
    k = node.get("k")
    if k is not None and _int(k, "export.k") < 0:
        raise LwqError(f"export.k={k}: the number of blocks at sweep.low is 0 or more")
    types = read_types(node.get("types"), "export.types")
    if quant.name == "gguf":  # the file holds the types the sweep measured, not export.types
        types = make_backend(quant.name, **quant.settings).types
    check_ctx = node.get("check_ctx")
    gguf = GgufExport(
        types=types,
        embeddings=_choice(node["embeddings"], EMBEDDING_TYPES, "export.embeddings"),
        base=_choice(node["base"], BASE_TYPES, "export.base"),
        threads=_positive_int(node.get("threads") or os.cpu_count() or 1, "export.threads"),
    )
    return ExportSpec(
        format=_choice(node["format"], EXPORT_FORMATS, "export.format"),
        k=None if k is None else int(k),
        out=resolve_path(node["out"]) if node.get("out") else None,
        gguf=gguf,
        check=bool(node.get("check", True)),
        check_chunks=_positive_int(node["check_chunks"], "export.check_chunks"),
        check_ctx=None if check_ctx is None else _positive_int(check_ctx, "export.check_ctx"),
    )


def _eval(node: dict) -> EvalConfig:
    if node.get("text"):
        check_text_source(node["text"], "eval.text")
    _positive_int(node["chunk_chars"], "eval.chunk_chars")
    if node.get("limit") is not None:
        _positive_int(node["limit"], "eval.limit")
    for task, limit in (node.get("limits") or {}).items():
        if limit is not None:
            _positive_int(limit, f"eval.limits.{task}")
    fewshot = dict(node.get("num_fewshot") or {})
    for task, count in fewshot.items():
        if _int(count, f"eval.num_fewshot.{task}") < 0:
            raise LwqError(f"eval.num_fewshot.{task}={count} must be 0 or more")
    include = node.get("include_path")
    if include and not Path(include).expanduser().is_dir():
        raise LwqError(f"eval.include_path={include} is not a directory of lm-eval task YAMLs")
    local = dict(node.get("local") or {})
    for task, entry in local.items():
        if not isinstance(entry, dict) or "file" not in entry:
            raise LwqError(f"eval.local.{task} must be {{file: <path>, fields: {{...}}}}")
        if not Path(str(entry["file"])).expanduser().is_file():
            raise LwqError(f"eval.local.{task}.file={entry['file']} not found")
    spec = EvalSpec(
        _name(node["name"], "eval.name"),
        node.get("text"),
        node["chunk_chars"],
        node.get("limit"),
        _int(node["seed"], "eval.seed"),
        _positive_int(node["max_length"], "eval.max_length"),
        tasks=tuple(node.get("tasks") or ()),
        source=node.get("source", "local"),
        limits=dict(node.get("limits") or {}),
        bootstrap_iters=_int(node.get("bootstrap_iters", 1000), "eval.bootstrap_iters"),
        num_fewshot=fewshot,
        include_path=str(Path(include).expanduser().resolve()) if include else None,
        local=local,
    )
    batch_size = _positive_int(node["batch_size"], "eval.batch_size")
    kl = node.get("kl", False)
    if not isinstance(kl, bool):
        raise LwqError(f"eval.kl={kl!r} must be true or false")
    top_k = _positive_int(node.get("kl_top_k", TOP_K), "eval.kl_top_k")
    if kl and not spec.text:
        raise LwqError("eval.kl=true needs a held-out text (eval.text); this suite has none")
    text_by = _choice(node.get("text_by", "lm-eval"), TEXT_ENGINES, "eval.text_by")
    return EvalConfig(
        spec, batch_size, _cross_check(node.get("cross_check")), top_k if kl else None, text_by
    )


def _cross_check(value) -> str:
    """`reference` (default), `all` or `none`; true/false meant all/none before."""
    value = {True: "all", False: "none", None: "reference"}.get(value, value)
    return _choice(value, CROSS_CHECKS, "eval.cross_check")


def _tracking(node: dict) -> TrackingSpec:
    name = _choice(node["name"], TRACKERS, "tracking")
    return TrackingSpec(name, node.get("project"), node.get("mode"))


def _device(value: str) -> str:
    pick_device(str(value))  # refuses an absent or malformed device now, not after loading
    return str(value)


def _choice(value, choices: tuple[str, ...], key: str) -> str:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LwqError(f"{key}={value} is not known{hint}; use one of {', '.join(choices)}")
    return value


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LwqError(f"{key}={value!r} must be an integer")
    return value


def _positive_int(value: Any, key: str) -> int:
    if _int(value, key) < 1:
        raise LwqError(f"{key}={value} must be a positive integer")
    return value


def _name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", value):
        raise LwqError(f"{key}={value!r}: use letters, digits, '_', '-' or '.' (it names files)")
    return value
