"""A plan as a GGUF file llama.cpp runs: each decoder block's linears at the llama.cpp type
its bit-width maps to, written by llama.cpp's own converter and quantizer.

The checkpoint goes through `convert_hf_to_gguf.py` once (float32 by default, so nothing
is rounded before the quantizer), then `llama-quantize` gives every block its type with
one `--tensor-type blk.N.=<type>` rule per block (`--pure`: no mixture heuristics; the
embedding and a separate output matrix stay at `embeddings`, as lwq keeps them). The
file is then read back, never trusted: llama.cpp falls back to another type when a
tensor's rows are not a multiple of the type's block (256 for the K-quants; SmolLM2's
576-wide inputs), so the bits each block really got come from the file, and every
fallback is listed. A block whose linears have different widths (finer units, lwq.units)
gets one rule per tensor instead (`blk.N.attn_q.=<type>`), its tensors named by gguf-py's
own map from the checkpoint's names (`tensor_names`).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lwq.errors import LwqError
from lwq.llama_cpp import LlamaCpp, run_tool
from lwq.plan import Plan
from lwq.provenance import file_sha256

BASE_TYPES = ("f32", "f16", "bf16")
EMBEDDING_TYPES = ("f32", "f16", "bf16", "q8_0")


@dataclass(frozen=True)
class GgufExport:
    """What `export.*` asks of a GGUF export, checked."""

    types: dict[int, str]  # bits -> llama.cpp type name
    embeddings: str  # token embedding (and untied output) type
    base: str  # the converter's output type, quantized from
    threads: int


Wanted = str | dict[str, str]  # a block's type, or its tensors' (GGUF name -> type)


def block_types(
    plan: Plan, types: dict[int, str], tensor_names: list[list[str]] | None = None
) -> list[Wanted]:
    """The llama.cpp type of every block of `plan` (of every tensor of a mixed block, by
    its GGUF name in `tensor_names[i]`); a width without a type is refused."""
    missing = sorted(b for b in plan.all_widths() if b not in types)
    if missing:
        known = ", ".join(f"{b}: {t}" for b, t in sorted(types.items()))
        raise LwqError(
            f"the plan has {missing}-bit blocks and export.types maps only {{{known}}}; "
            f"add e.g. export.types.{missing[0]}=<llama.cpp type>"
        )
    wanted: list[Wanted] = []
    for i, bits in enumerate(plan.bits):
        if isinstance(bits, int):
            wanted.append(types[bits])
        elif tensor_names is None:
            raise LwqError(f"block {i} mixes widths; the export needs its tensors' GGUF names")
        else:
            wanted.append({n: types[b] for n, b in zip(tensor_names[i], bits, strict=True)})
    return wanted


def all_types(wanted: list[Wanted]) -> set[str]:
    return {t for w in wanted for t in ([w] if isinstance(w, str) else w.values())}


def tensor_type_rules(types_per_block: list[Wanted]) -> list[str]:
    """llama-quantize's `--tensor-type` rules: `blk\\.N\\.` matches block N only,
    `blk\\.N\\.attn_q\\.` one tensor of it."""
    rules = []
    for i, wanted in enumerate(types_per_block):
        if isinstance(wanted, str):
            rules.append(rf"blk\.{i}\.={wanted}")
        else:
            rules += [rf"blk\.{i}\.{name}\.={t}" for name, t in wanted.items()]
    return rules


def tensor_names(model_type: str, prefix: str, linear_names: list[list[str]]) -> list[list[str]]:
    """Each block linear's GGUF tensor name inside its block (`self_attn.q_proj` ->
    `attn_q`), by gguf-py's name map for the checkpoint's architecture."""
    import gguf

    arch = {name: a for a, name in gguf.MODEL_ARCH_NAMES.items()}.get(
        model_type, gguf.MODEL_ARCH.LLAMA
    )
    names = gguf.get_tensor_name_map(arch, len(linear_names))
    out = []
    for i, linears in enumerate(linear_names):
        block = []
        for linear in linears:
            found = names.get_name(f"{prefix}.{i}.{linear}")
            if found is None or not found.startswith(f"blk.{i}."):
                raise LwqError(
                    f"gguf-py has no GGUF name for {prefix}.{i}.{linear} ({model_type}); "
                    "export this model's plans at allocate.unit=block"
                )
            block.append(found.split(".", 2)[2])
        out.append(block)
    return out


def write(
    checkpoint: Path,
    plan: Plan,
    out: Path,
    settings: GgufExport,
    tools: LlamaCpp,
    names: list[list[str]] | None = None,
) -> dict:
    """Write `plan` on `checkpoint` (a local HF directory) to `out`; returns the manifest
    (also written beside the file as `<out>.json`). `names` are the blocks' tensors' GGUF
    names (`tensor_names`), needed by mixed blocks only."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wanted = block_types(plan, settings.types, names)
    base = out.with_name(out.name + f".{settings.base}.tmp.gguf")
    partial = out.with_name(out.name + ".partial")
    rules = out.with_name(out.name + ".tensor-types.txt")
    try:
        convert = [
            sys.executable,
            str(tools.converter),
            str(checkpoint),
            "--outtype",
            settings.base,
            "--outfile",
            str(base),
        ]
        try:
            run_tool(convert, "convert_hf_to_gguf")
        except LwqError as err:
            if "pre-tokenizer was not recognized" in str(err):
                raise LwqError(
                    f"llama.cpp's converter does not know the tokenizer of {checkpoint} (it "
                    "knows the published models' ones; ref-tiny's is lwq's own), so llama.cpp "
                    "could not run the file; export a model it converts, e.g. model=smollm2-135m"
                ) from err
            raise
        rules.write_text("\n".join(tensor_type_rules(wanted)) + "\n")
        quantize = [
            str(tools.tool("llama-quantize")),
            "--pure",
            "--token-embedding-type",
            settings.embeddings,
            "--output-tensor-type",
            settings.embeddings,
            "--tensor-type-file",
            str(rules),
            str(base),
            str(partial),
            _main_type(wanted),
            str(settings.threads),
        ]
        run_tool(quantize, "llama-quantize")
        partial.replace(out)  # a file at `out` is always a whole one
    finally:
        for path in (base, partial, rules):
            path.unlink(missing_ok=True)
    manifest = {
        "file": out.name,
        "sha256": file_sha256(out),
        "bytes": out.stat().st_size,
        "plan": plan.as_list(),
        "wanted_types": wanted,
        "settings": {"embeddings": settings.embeddings, "base": settings.base},
        **tools.describe(),
        **read_back(out, wanted),
    }
    out.with_name(out.name + ".json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _main_type(wanted: list[Wanted]) -> str:
    """llama-quantize applies `--tensor-type` rules only when its main type is quantized;
    every block tensor has a rule, so any quantized type serves (F16-only plans excepted)."""
    flat = [t for w in wanted for t in ([w] if isinstance(w, str) else w.values())]
    quantized = [t for t in flat if t not in BASE_TYPES]
    return Counter(quantized).most_common(1)[0][0] if quantized else "f16"


def read_back(path: Path, wanted: list[Wanted]) -> dict:
    """Per block, the types the file holds and their real bits per weight (block linears
    only, as lwq counts them), and every tensor that is not at the type its block wanted."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    blocks: list[dict] = [{"bytes": 0, "weights": 0, "types": Counter()} for _ in wanted]
    fallbacks = []
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if parts[0] != "blk" or len(tensor.shape) < 2:  # norms stay F32: not in any plan
            continue
        i, got = int(parts[1]), tensor.tensor_type.name.lower()
        if i >= len(wanted):
            raise LwqError(f"{path} has block {i}, the plan only {len(wanted)} blocks")
        block = blocks[i]
        block["bytes"] += int(tensor.n_bytes)
        block["weights"] += int(tensor.n_elements)
        block["types"][got] += 1
        want = wanted[i] if isinstance(wanted[i], str) else wanted[i].get(parts[2])
        if got != want:
            fallbacks.append({"tensor": tensor.name, "wanted": want, "got": got})
    empty = [i for i, b in enumerate(blocks) if not b["weights"]]
    if empty:
        raise LwqError(f"{path} has no 2-D tensors for blocks {empty}; the export is broken")
    total_bytes = sum(b["bytes"] for b in blocks)
    total_weights = sum(b["weights"] for b in blocks)
    return {
        "blocks": [
            {
                "block": i,
                "bits_per_weight": round(8 * b["bytes"] / b["weights"], 4),
                "types": dict(sorted(b["types"].items())),
            }
            for i, b in enumerate(blocks)
        ],
        "block_bits_per_weight": round(8 * total_bytes / total_weights, 4),
        "fallbacks": fallbacks,
    }


def summary(manifest: dict) -> str:
    """A few lines for the terminal: where the file is, its real bits, its fallbacks."""
    plan = Plan(tuple(manifest["plan"]))
    nominal = "mixed blocks" if plan.mixed else f"nominal {plan.avg_bits:.3f}, scales not counted"
    lines = [
        f"wrote {manifest['file']} ({manifest['bytes'] / 2**20:.1f} MiB, sha256 "
        f"{manifest['sha256'][:12]}): blocks at {manifest['block_bits_per_weight']:.3f} "
        f"bits/weight in the file (plan {nominal})"
    ]
    fallbacks = manifest["fallbacks"]
    if fallbacks:
        pairs = Counter(f"{f['wanted']}->{f['got']}" for f in fallbacks)
        lines.append(
            f"{len(fallbacks)} tensors are not at their block's type (rows not a multiple of "
            f"the type's block; llama.cpp fell back): "
            + ", ".join(f"{n} x {p}" for p, n in pairs.most_common())
        )
    return "\n".join(lines)
