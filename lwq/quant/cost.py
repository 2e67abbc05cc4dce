"""What a plan costs: nominal bits, true bits per weight and bytes, computed from shapes.

Nothing is quantized here, so the same numbers are available before a run (planning)
and after it (records). Everything outside the blocks' linear layers (embeddings, norms,
an untied LM head) is counted at 16 bits; tied weights count once. The table is built
from the model as loaded and keeps the original linears' shapes, so later swaps of
blocks for quantized variants (which may hold packed modules) change nothing here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from lwq.modeling.blocks import block_linears
from lwq.plan import Plan, Widths, entry_widths
from lwq.quant.base import MODEL_DTYPE_BYTES, Backend


@dataclass(frozen=True)
class Cost:
    avg_bits: float  # nominal, the paper's number: mean of the per-block bits (a mixed
    # block counts its weight-weighted mean width)
    bits_per_weight: float  # 8 * bytes of the blocks' linears (scales, zeros, bias) / weights
    weight_bytes: int  # the whole model's weights as stored
    block_bytes: tuple[int, ...]  # the linears of each block


class SizeTable:
    """Bytes of each block's linears at any width under one backend, from the model as loaded."""

    def __init__(self, model: torch.nn.Module, blocks: torch.nn.ModuleList, backend: Backend):
        in_blocks = {id(p) for block in blocks for p in block.parameters()}
        self.backend = backend
        self.outside = sum(p.numel() for p in model.parameters() if id(p) not in in_blocks)
        named = [block_linears(block) for block in blocks]
        self._linears = [[m for _, m in pairs] for pairs in named]
        self.linear_names = [tuple(name for name, _ in pairs) for pairs in named]
        self.linear_weights = [tuple(m.weight.numel() for m in ms) for ms in self._linears]
        self.weights = [sum(ws) for ws in self.linear_weights]
        self.block_other = []  # parameters of each block outside its linears (norms)
        for block, linears in zip(blocks, self._linears, strict=True):
            linear_params = {id(p) for m in linears for p in m.parameters(recurse=False)}
            self.block_other.append(
                sum(p.numel() for p in block.parameters() if id(p) not in linear_params)
            )
        linear_weights = {id(m.weight) for ms in self._linears for m in ms}
        # every tensor a plan leaves as it is (embeddings, norms, biases): a file format's
        # size rule (lwq.export.gguf_sizes) counts them by shape
        self.other_shapes = tuple(
            tuple(p.shape) for p in model.parameters() if id(p) not in linear_weights
        )
        self._bytes: dict[tuple[int, int, int], int] = {}

    def __len__(self) -> int:
        return len(self._linears)

    def linear_bytes(self, i: int, j: int, bits: int) -> int:
        """Bytes of linear j of block i at `bits` (scales, zero points, bias included)."""
        if (i, j, bits) not in self._bytes:
            self._bytes[i, j, bits] = self.backend.weight_bytes(self._linears[i][j], bits)
        return self._bytes[i, j, bits]

    def block_bytes(self, i: int, bits: Widths) -> int:
        """Bytes of block i's linears at `bits`: one width, or one per linear."""
        widths = entry_widths(bits, len(self._linears[i]), f"block {i}")
        return sum(self.linear_bytes(i, j, b) for j, b in enumerate(widths))

    def nominal_bits(self, i: int, bits: Widths) -> float:
        """Block i's nominal width: its one width, or its linears' weight-weighted mean."""
        if isinstance(bits, int):
            return bits
        weights = self.linear_weights[i]
        return sum(b * w for b, w in zip(bits, weights, strict=True)) / sum(weights)

    def in_format(self, rule) -> SizeTable:
        """The same shapes under another size rule (a file format's: `weight_bytes` and
        `fixed_bytes(shapes)`, e.g. lwq.export.gguf_sizes.GgufFileSizes)."""
        table = copy.copy(self)
        table.backend, table._bytes = rule, {}
        return table

    def fixed_bytes(self, removed: tuple[int, ...] = ()) -> int:
        """Bytes of everything no plan changes: embeddings, head, norms (16-bit, or as the
        table's file format stores them)."""
        by_format = getattr(self.backend, "fixed_bytes", None)
        if by_format is not None:
            if removed:
                raise ValueError("a file format's size rule counts no pruned blocks")
            return by_format(self.other_shapes)
        kept = [o for i, o in enumerate(self.block_other) if i not in removed]
        return MODEL_DTYPE_BYTES * (self.outside + sum(kept))

    def cost(self, plan: Plan, removed: tuple[int, ...] = ()) -> Cost:
        """Sizes under `plan`; `removed` blocks (pruning) cost nothing at all and leave the
        nominal average over the kept blocks."""
        if len(plan.bits) != len(self):
            raise ValueError(f"plan has {len(plan.bits)} blocks, the model {len(self)}")
        block_bytes = tuple(
            0 if i in removed else self.block_bytes(i, bits) for i, bits in enumerate(plan.bits)
        )
        weights = sum(w for i, w in enumerate(self.weights) if i not in removed)
        kept = [self.nominal_bits(i, b) for i, b in enumerate(plan.bits) if i not in removed]
        return Cost(
            avg_bits=sum(kept) / len(kept),
            bits_per_weight=8 * sum(block_bytes) / weights,
            weight_bytes=sum(block_bytes) + self.fixed_bytes(removed),
            block_bytes=block_bytes,
        )
