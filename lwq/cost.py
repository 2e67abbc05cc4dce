"""What a plan costs: nominal bits, true bits per weight and bytes, computed from shapes.

Nothing is quantized here, so the same numbers are available before a run (planning)
and after it (records). Everything outside the blocks' linear layers (embeddings, norms,
an untied LM head) is counted at 16 bits; tied weights count once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lwq.apply import original_of
from lwq.models import block_linears
from lwq.plan import Plan
from lwq.quant.base import Backend


@dataclass(frozen=True)
class Cost:
    avg_bits: float  # nominal, the paper's number: mean of the per-block bits
    bits_per_weight: float  # 8 * bytes of the blocks' linears (scales, zeros, bias) / weights
    weight_bytes: int  # the whole model's weights as stored
    block_bytes: tuple[int, ...]  # the linears of each block


def plan_cost(
    model: torch.nn.Module, blocks, plan: Plan, backend: Backend, removed: tuple[int, ...] = ()
) -> Cost:
    """Sizes of `model` under `plan`; `removed` blocks (pruning) cost nothing at all and
    leave the nominal average over the kept blocks."""
    if len(plan.bits) != len(blocks):
        raise ValueError(f"plan has {len(plan.bits)} blocks, the model {len(blocks)}")
    # Sizes come from the blocks as loaded: an installed variant may hold packed modules.
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    other = sum(p.numel() for p in model.parameters() if id(p) not in in_blocks)
    block_bytes, weights = [], 0
    for i, (block, bits) in enumerate(zip(blocks, plan.bits, strict=True)):
        total, linear_params, original = 0, set(), original_of(block)
        if i in removed:
            block_bytes.append(0)
            continue
        for _, module in block_linears(original):
            total += backend.weight_bytes(module, bits)
            weights += module.weight.numel()
            linear_params.update(id(p) for p in module.parameters(recurse=False))
        other += sum(p.numel() for p in original.parameters() if id(p) not in linear_params)
        block_bytes.append(total)
    kept = [b for i, b in enumerate(plan.bits) if i not in removed]
    return Cost(
        avg_bits=sum(kept) / len(kept),
        bits_per_weight=8 * sum(block_bytes) / weights,
        weight_bytes=sum(block_bytes) + 2 * other,
        block_bytes=tuple(block_bytes),
    )
