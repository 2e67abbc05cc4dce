"""The run's configuration as typed frozen specs: what every command receives.

Built once, at the boundary, by lwq.config.hydra (from Hydra's composed config) through the
checks of lwq.config.checks; the library below takes these specs or plain values from them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from lwq.evaluation.suite import EvalSpec
from lwq.export.gguf_file import GgufExport
from lwq.plan import Plan
from lwq.quant import Backend
from lwq.runtime import PROJECT_ROOT
from lwq.search import SearchSettings

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
    """A backend name and its settings as configured (`eval_dequantized: auto` kept), and
    the backend built from them once, here (it checked its own values)."""

    name: str
    settings: dict
    backend: Backend = field(compare=False, repr=False)

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
    logits_memory: float | None = None  # GB of log-probabilities at once; None = whole logits
    reuse_memory: float | None = None  # GB of hidden states kept for prefix reuse; None = off
    reuse_on: str = "host"  # host | device: where they are kept


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
    method: str = "dp"  # dp | search (lwq.search, from dp's plan)
    search: SearchSettings | None = None  # method=search only
    format: str | None = None  # None: nominal bits | gguf | gptq: the bits that file holds
    gguf: GgufExport | None = None  # format=gguf: the export's types the file will hold
    unit: str = "block"  # block | sublayer | linear (lwq.units)
    ties: tuple[tuple[str, ...], ...] = ()  # unit=linear: short names sharing one width
    ties_given: bool = False  # written in the config (checked against the model) or auto

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
    originals: str = "disk"  # where changed blocks' originals wait: disk (scratch files) | host
