"""Every check of a run's configuration that needs no model, data or quantizer library:
one LwqError line naming the fix, before anything heavy starts. `build_run` assembles the
checked RunConfig from the resolved config as plain data.

Checks that need the checkpoint's own config (its context length, its number of blocks)
are made by lwq.commands.preflight after reading `config.json`, before the weights load.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from lwq.config.specs import (
    BASELINES,
    COMMANDS,
    CONF_DIR,
    DTYPES,
    EXPORT_FORMATS,
    TRACKERS,
    BudgetSpec,
    CalibSpec,
    EvalConfig,
    ExportSpec,
    MetricSpec,
    ModelShape,
    ModelSpec,
    PathsSpec,
    QuantSpec,
    RunConfig,
    SweepSpec,
    TrackingSpec,
)
from lwq.data import check_text_source
from lwq.errors import LwqError
from lwq.evaluation.divergence import TOP_K
from lwq.evaluation.suite import CROSS_CHECKS, TEXT_ENGINES, EvalSpec
from lwq.evaluation.tasks import check_source
from lwq.export.gguf_file import BASE_TYPES, EMBEDDING_TYPES, GgufExport
from lwq.metrics import METRICS
from lwq.plan import Plan, blocks_for_fraction, read_plan_file
from lwq.quant import BACKENDS, check_bits, make_backend
from lwq.quant.base import FULL_PRECISION
from lwq.quant.gguf_types import read_types
from lwq.runtime import pick_device, resolve_path
from lwq.search import SearchSettings
from lwq.units import FUSED, KINDS

# metric name -> its conf/metric/<name>.yaml node resolved against this run
MetricDefaults = Callable[[str], dict]


def build_run(plain: dict, metric_defaults: MetricDefaults) -> RunConfig:
    """Check and type a resolved config given as plain data."""
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
            default_metric(metric_defaults, name, "compare_metrics")
            for name in plain["compare_metrics"]
        ),
        # checked only where it is measured (sweep.low=16 makes its default bits 16)
        sensitivity=default_metric(
            metric_defaults, "sensitivity", "sensitivity", check=command == "compare"
        ),
        paths=PathsSpec(
            results=resolve_path(plain["paths"]["results"]),
            cache=resolve_path(plain["paths"]["cache"]),
            data=resolve_path(plain["paths"]["data"]),
        ),
        tracking=_tracking(plain["tracking"]),
        plain=plain,
        export=_export(plain["export"], quant) if command == "export" else None,
        originals=_choice(plain.get("originals", "disk"), ("disk", "host"), "originals"),
    )


def default_metric(
    metric_defaults: MetricDefaults, name: str, key: str, check: bool = True
) -> MetricSpec:
    """Metric `name` with the settings of conf/metric/<name>.yaml, resolved against this run
    (so `${sweep.low}` in sensitivity.yaml means this run's low bit-width)."""
    path = CONF_DIR / "metric" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "metric").glob("*.yaml"))
        raise LwqError(f"{key} names metric {name!r}; known: {', '.join(known)}")
    return _metric(metric_defaults(name), key, check)


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
    return QuantSpec(name, settings, make_backend(name, **settings))  # it checks its values


def _sweep(node: dict, quant: QuantSpec) -> SweepSpec:
    backend = quant.backend
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
    method, search = _allocate(plain)
    file_format, gguf = _allocate_format(plain, quant)
    unit, ties, ties_given = _allocate_unit(plain, file_format, quant)
    spec = BudgetSpec(
        None if avg_bits is None else float(avg_bits),
        size,
        allowed,
        method,
        search,
        file_format,
        gguf,
        unit,
        ties,
        ties_given,
    )
    if spec.wanted:
        if not allowed:
            raise LwqError("allowed_bits is empty; give the allocator widths, e.g. [2, 3, 4, 8]")
        for bits in allowed:
            check_bits(quant.backend, bits)
        if FULL_PRECISION in allowed:
            raise LwqError("allowed_bits must not contain 16 (measured against the 16-bit model)")
        if file_format is not None:
            return spec  # the file's bits per weight: checked on the model's shapes (preflight)
        if spec.avg_bits is not None and not allowed[0] <= spec.avg_bits:
            raise LwqError(
                f"budget={spec.avg_bits:g} average bits is below the all-lowest plan (every "
                f"block at {allowed[0]} bits = {allowed[0]:g}); reachable with allowed_bits="
                f"{list(allowed)}: {allowed[0]:g}..{allowed[-1]:g}"
            )
        if spec.avg_bits is not None and spec.avg_bits > allowed[-1]:
            raise LwqError(
                f"budget={spec.avg_bits:g} average bits is above the all-highest plan (every "
                f"block at {allowed[-1]} bits = {allowed[-1]:g}); reachable with allowed_bits="
                f"{list(allowed)}: {allowed[0]:g}..{allowed[-1]:g}"
            )
    return spec


def _allocate_format(plain: dict, quant: QuantSpec) -> tuple[str | None, GgufExport | None]:
    """`allocate.format`: the file whose bits a budget counts (None: nominal bits), and
    for gguf the export's types it counts them with."""
    value = (plain.get("allocate") or {}).get("format")
    if value is None:
        return None, None
    value = _choice(value, ("gguf", "gptq"), "allocate.format")
    if value == "gptq" and quant.name != "gptq":
        raise LwqError(
            f"allocate.format=gptq counts the GPTQ checkpoint lwq exports from quant=gptq; "
            f"this run quantizes with quant={quant.name}: set quant=gptq or allocate.format=gguf"
        )
    return value, _gguf_export(plain["export"], quant) if value == "gguf" else None


def _allocate_unit(
    plain: dict, file_format: str | None, quant: QuantSpec
) -> tuple[str, tuple[tuple[str, ...], ...], bool]:
    """`allocate.unit`; for `linear` the ties (`auto`: the layers engines fuse when the
    budget counts a GPTQ file, none otherwise) and whether the config named them."""
    node = plain.get("allocate") or {}
    unit = _choice(node.get("unit", "block"), KINDS, "allocate.unit")
    if unit != "block" and not isinstance(quant.backend.unit, str):
        raise LwqError(
            f"allocate.unit={unit} gives a block's linears different widths; quant="
            f"{quant.name} calibrates whole blocks together: use allocate.unit=block"
        )
    ties = node.get("ties", "auto")
    if unit != "linear":
        return unit, (), False
    if ties == "auto":
        return unit, FUSED if file_format == "gptq" else (), False
    if ties in (None, "none"):
        return unit, (), True
    if not isinstance(ties, list | tuple) or not all(isinstance(t, list | tuple) for t in ties):
        raise LwqError(
            f"allocate.ties must be auto, none or a list of name groups such as "
            f"[[q_proj,k_proj,v_proj],[gate_proj,up_proj]]; got {ties!r}"
        )
    return unit, tuple(tuple(str(n) for n in tie) for tie in ties), True


def _allocate(plain: dict) -> tuple[str, SearchSettings | None]:
    """`allocate.method` and, for `search`, its settings (checked by SearchSettings)."""
    node = plain.get("allocate") or {}
    method = _choice(node.get("method", "dp"), ("dp", "search"), "allocate.method")
    if method != "search":
        return method, None
    given = dict(node.get("search") or {})
    unknown = sorted(set(given) - {"generations", "offspring", "schedule", "max_raises", "seed"})
    if unknown:
        raise LwqError(f"allocate.search has no setting {unknown[0]!r}")
    calib = plain.get("calib") or {}
    settings = SearchSettings(**given)
    most = int(calib.get("samples", 0)) * int(calib.get("seq_len", 0))
    if most and settings.schedule[-1][0] > most:
        raise LwqError(
            f"allocate.search.schedule asks for {settings.schedule[-1][0]} calibration tokens; "
            f"calib gives {most} ({calib['samples']} x {calib['seq_len']}): raise calib.samples "
            "or lower the schedule's tokens"
        )
    return method, settings


def _plan_file(value, quant: QuantSpec) -> tuple[Path | None, Plan | None]:
    if not value:
        return None, None
    path = resolve_path(value)
    plan = read_plan_file(path)
    for bits in sorted(plan.all_widths()):
        check_bits(quant.backend, bits)
    return path, plan


def _export(node: dict, quant: QuantSpec) -> ExportSpec:
    k = node.get("k")
    if k is not None and _int(k, "export.k") < 0:
        raise LwqError(f"export.k={k}: the number of blocks at sweep.low is 0 or more")
    check_ctx = node.get("check_ctx")
    return ExportSpec(
        format=_choice(node["format"], EXPORT_FORMATS, "export.format"),
        k=None if k is None else int(k),
        out=resolve_path(node["out"]) if node.get("out") else None,
        gguf=_gguf_export(node, quant),
        check=bool(node.get("check", True)),
        check_chunks=_positive_int(node["check_chunks"], "export.check_chunks"),
        check_ctx=None if check_ctx is None else _positive_int(check_ctx, "export.check_ctx"),
    )


def _gguf_export(node: dict, quant: QuantSpec) -> GgufExport:
    """The `export` node's GGUF settings: types per width, embeddings, base, threads."""
    types = read_types(node.get("types"), "export.types")
    if quant.name == "gguf":  # the file holds the types the sweep measured, not export.types
        types = quant.backend.types
    return GgufExport(
        types=types,
        embeddings=_choice(node["embeddings"], EMBEDDING_TYPES, "export.embeddings"),
        base=_choice(node["base"], BASE_TYPES, "export.base"),
        threads=_positive_int(node.get("threads") or os.cpu_count() or 1, "export.threads"),
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
        dtype=_choice(node.get("dtype", "float32"), ("float32", "bfloat16"), "eval.dtype"),
    )
    _check_suite(spec)
    batch_size = _positive_int(node["batch_size"], "eval.batch_size")
    kl = node.get("kl", False)
    if not isinstance(kl, bool):
        raise LwqError(f"eval.kl={kl!r} must be true or false")
    top_k = _positive_int(node.get("kl_top_k", TOP_K), "eval.kl_top_k")
    if kl and not spec.text:
        raise LwqError("eval.kl=true needs a held-out text (eval.text); this suite has none")
    text_by = _choice(node.get("text_by", "lm-eval"), TEXT_ENGINES, "eval.text_by")
    return EvalConfig(
        spec,
        batch_size,
        _cross_check(node.get("cross_check")),
        top_k if kl else None,
        text_by,
        _gigabytes_or_none(node.get("logits_memory"), "eval.logits_memory"),
        _gigabytes_or_none(node.get("reuse_memory") or None, "eval.reuse_memory"),
        _choice(node.get("reuse_on", "host"), ("host", "device"), "eval.reuse_on"),
    )


def _check_suite(spec: EvalSpec) -> None:
    """A suite evaluates something, from a known source, with settings only for its tasks."""
    check_source(spec.source)
    for key in ("num_fewshot", "local"):
        stray = sorted(set(getattr(spec, key)) - set(spec.tasks))
        if stray:
            raise LwqError(f"eval.{key} names {stray}, which are not in eval.tasks")
    if not spec.text and not spec.tasks:
        raise LwqError("the eval suite has neither a text nor tasks; set eval.text or eval.tasks")


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


def _gigabytes_or_none(value: Any, key: str) -> float | None:
    """A positive size in GB (int or float), or None (no bound)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise LwqError(f"{key}={value!r} must be a positive number of GB, or null for no bound")
    return float(value)


def _name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", value):
        raise LwqError(f"{key}={value!r}: use letters, digits, '_', '-' or '.' (it names files)")
    return value
