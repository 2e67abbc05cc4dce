"""A plan as a GPTQ checkpoint: the very blocks lwq calibrated, packed and evaluated, saved
in the GPTQ format with one bit-width per block.

Each quantized linear is gptqmodel's packed `TorchLinear` (int32-packed codes and zero
points, float16 scales, an int32 group index). They are written in the common v1 layout
(`checkpoint_format: gptq`, converted by gptqmodel's own function), which the engines that
read GPTQ checkpoints share. The checkpoint's `bits` is the plan's most common width;
every other block gets a gptqmodel `dynamic` rule (`+:<block prefix>.N.` with its bits,
`-:` for a block the plan leaves at full precision, saved as plain float16 weights), the
per-module override gptqmodel, and engines built on it, read when loading. A block whose
linears have different widths (finer units, lwq.units) gets one rule per linear not at the
common width (`+:<prefix>.N.self_attn.q_proj`). Whatever stays unquantized is saved in
float16, as lwq counts it.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import torch

from lwq.errors import LwqError
from lwq.plan import Plan
from lwq.quant.base import FULL_PRECISION

CONFIG_FILE = "quantize_config.json"  # gptqmodel's name; config.json carries it too


def block_prefix(model: torch.nn.Module, blocks: torch.nn.ModuleList) -> str:
    """The module path of the decoder blocks (`model.layers` for Llama)."""
    for name, module in model.named_modules():
        if module is blocks:
            return name
    raise LwqError("the decoder blocks are not a submodule of the model; cannot name them")


def quantization_config(
    plan: Plan, settings: dict, prefix: str, linear_names: list[list[str]] | None = None
) -> dict:
    """gptqmodel's config for `plan`: the common width, and a rule per other block (per
    other linear of a mixed block, named by `linear_names[i]`)."""
    widths = []  # (block, linear name or None: the whole block, bits)
    for i, bits in enumerate(plan.bits):
        if isinstance(bits, int):
            widths.append((i, None, bits))
        else:
            widths += [(i, n, w) for n, w in zip(_names(linear_names, i), bits, strict=True)]
    linears = Counter()  # the common width: the one most linears hold (fewest rules)
    for i, name, bits in widths:
        if bits != FULL_PRECISION:
            linears[bits] += 1 if name is not None or linear_names is None else len(linear_names[i])
    if not linears:
        raise LwqError("the plan quantizes no block; there is no GPTQ checkpoint to write")
    common = linears.most_common(1)[0][0]
    dynamic: dict[str, dict] = {}
    for i, name, bits in widths:
        inside = r".*" if name is None else re.escape(name)
        pattern = rf"{re.escape(prefix)}\.{i}\.{inside}"
        if bits == FULL_PRECISION:
            dynamic[f"-:{pattern}"] = {}
        elif bits != common:
            dynamic[f"+:{pattern}"] = {"bits": bits}
    return {
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "bits": common,
        "group_size": settings["group_size"],
        "sym": settings["sym"],
        "desc_act": settings["act_order"],
        "pack_dtype": "int32",
        "lm_head": False,
        "dynamic": dynamic,
        # who packed the codes and wrote the v1 zero points: gptqmodel reads sym=false v1
        # checkpoints only from producers that write them its way (>= 0.9.0)
        "meta": {"quantizer": [f"gptqmodel:{version('gptqmodel')}", f"lwq:{version('lwq')}"]},
    }


def _names(linear_names: list[list[str]] | None, i: int) -> list[str]:
    if linear_names is None:
        raise LwqError(f"block {i} mixes widths; the export needs the blocks' linear names")
    return list(linear_names[i])


@torch.no_grad()
def write(
    model,
    tokenizer,
    blocks,
    plan: Plan,
    settings: dict,
    out: Path,
    linear_names: list[list[str]] | None = None,
) -> dict:
    """Save `model`, whose blocks hold the plan's packed GPTQ linears (as installed for
    evaluation), to the directory `out`; returns the quantization config written.
    `linear_names` (each block's, as loaded) name the linears of mixed blocks."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    from gptqmodel.quantization.config import QuantizeConfig
    from gptqmodel.utils.model import convert_gptq_v2_to_v1_format_module

    out = Path(out)
    config = quantization_config(plan, settings, block_prefix(model, blocks), linear_names)
    for i, bits in enumerate(plan.bits):
        held = _packed_widths(blocks[i])
        if isinstance(bits, int):
            wanted = {n: bits for n in held} if bits != FULL_PRECISION else {}
        else:
            named = zip(_names(linear_names, i), bits, strict=True)
            wanted = {n: b for n, b in named if b != FULL_PRECISION}
        if held != wanted or (isinstance(bits, int) and bits != FULL_PRECISION and not held):
            raise LwqError(
                f"block {i} holds packed GPTQ linears {held or 'none'}, the plan says {bits}; "
                "install the plan with quant=gptq eval_dequantized=false first"
            )
    # float16 for what stays unquantized (embeddings, norms, 16-bit blocks): the GPTQ
    # convention, what gptqmodel's torch kernel runs in, and the 16 bits lwq counts them at
    saved = copy.deepcopy(model).cpu().to(torch.float16)
    library = QuantizeConfig(bits=config["bits"], group_size=config["group_size"])
    for module in saved.modules():
        if isinstance(module, BaseQuantLinear):
            convert_gptq_v2_to_v1_format_module(module=module, quantize_config=library)
    saved.config.quantization_config = config
    out.mkdir(parents=True, exist_ok=True)
    saved.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return config


def same_packed_tensors(model, blocks, loaded) -> bool:
    """Whether `loaded` (the checkpoint as gptqmodel built it) holds exactly the codes, zero
    points, scales and group index of every quantized linear installed in `model`."""
    theirs = _packed_by_block(loaded.get_submodule(block_prefix(model, blocks)))
    mine = _packed_by_block(blocks)
    if [len(m) for m in mine] != [len(t) for t in theirs]:
        return False
    pairs = [
        (a, b) for ms, ts in zip(mine, theirs, strict=True) for a, b in zip(ms, ts, strict=True)
    ]
    return all(
        torch.equal(getattr(a, name).cpu(), getattr(b, name).cpu())
        for a, b in pairs
        for name in ("qweight", "qzeros", "scales", "g_idx")
    )


def _packed_widths(block) -> dict[str, int]:
    """The width of every packed GPTQ linear of `block`, by its name in the block."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    return {n: m.bits for n, m in block.named_modules() if isinstance(m, BaseQuantLinear)}


def _packed_by_block(blocks) -> list[list]:
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    return [[m for m in block.modules() if isinstance(m, BaseQuantLinear)] for block in blocks]


def read_back(out: Path, blocks) -> dict:
    """Per block, the bits per weight the saved tensors really hold (codes, zero points,
    scales, group index and biases of its linears; norms left out, as lwq counts)."""
    from safetensors import safe_open

    weights = [sum(m.in_features * m.out_features for m in _linears(block)) for block in blocks]
    held = [0] * len(weights)
    pattern = re.compile(r"(?:^|\.)(\d+)\.(.+)$")
    for path in sorted(Path(out).glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                found = pattern.search(name)
                if not found or "norm" in found.group(2) or int(found.group(1)) >= len(held):
                    continue
                tensor = handle.get_slice(name)
                held[int(found.group(1))] += _nbytes(tensor.get_shape(), tensor.get_dtype())
    if not all(held):
        empty = [i for i, h in enumerate(held) if not h]
        raise LwqError(f"{out} holds no tensors for blocks {empty}; the export is broken")
    return {
        "blocks": [
            {"block": i, "bits_per_weight": round(8 * h / w, 4)}
            for i, (h, w) in enumerate(zip(held, weights, strict=True))
        ],
        "block_bits_per_weight": round(8 * sum(held) / sum(weights), 4),
        "bytes": sum(p.stat().st_size for p in Path(out).glob("*.safetensors")),
    }


def summary(manifest: dict) -> str:
    plan = Plan(tuple(manifest["plan"]))
    nominal = "mixed blocks" if plan.mixed else f"nominal {plan.avg_bits:.3f}"
    return (
        f"wrote {manifest['directory']} ({manifest['bytes'] / 2**20:.1f} MiB of weights): "
        f"blocks at {manifest['block_bits_per_weight']:.3f} bits/weight in the files (plan "
        f"{nominal}; GPTQ's scales, zero points and group index counted)"
    )


def _linears(block) -> list:
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    return [m for m in block.modules() if isinstance(m, BaseQuantLinear | torch.nn.Linear)]


_DTYPE_BYTES = {"I32": 4, "F16": 2, "BF16": 2, "F32": 4, "I64": 8, "I8": 1, "U8": 1, "I16": 2}


def _nbytes(shape: list[int], dtype: str) -> int:
    return math.prod(shape) * _DTYPE_BYTES[dtype]
