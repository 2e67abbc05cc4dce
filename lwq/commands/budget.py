"""What a budget counts, and whether the model's shapes can meet it.

`budget=` (average bits) counts nominal bits by default: the paper's number, the mean of
the blocks' widths. With `allocate.format=gguf|gptq` it counts the bits per weight the
exported file will hold for this model's shapes (lwq.export.gguf_sizes: llama.cpp's
fallbacks on odd widths; the GPTQ checkpoint: the gptq backend's own bytes, scales and
zero points included), and `budget_bytes=` counts that file's tensor bytes. The allocator
then plans in those units, so the file's bits equal the plan's. `check_budget` refuses,
before anything loads, a budget outside what the all-lowest and all-highest plans hold,
with the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lwq.allocate import average_bits_budget
from lwq.config import RunConfig
from lwq.errors import LwqError
from lwq.export.gguf_sizes import GgufFileSizes
from lwq.plan import Plan
from lwq.quant.cost import SizeTable
from lwq.units import Unit, check_ties, linear_counts, make_units, plan_of, short, tied_labels


@dataclass(frozen=True)
class Budget:
    """The allocator's problem: per-unit size at each width, and the size allowed."""

    sizes: list[dict[int, int]]  # unit -> {bits: size}
    limit: int
    target: dict  # what was asked, as it enters the plan's cache key
    units: list[Unit]  # what each entry of `sizes` covers (lwq.units)

    def plan(self, unit_bits) -> Plan:
        """The model's plan giving each unit its width."""
        return plan_of(self.units, tuple(unit_bits), linear_counts(self.units))


def budget_units(run: RunConfig, sizes: SizeTable) -> list[Unit]:
    """The units `allocate.unit` names on this model; ties written in the config must name
    its linears, the automatic ones apply where they do."""
    names = sizes.linear_names
    ties = run.budget.ties
    if run.budget.ties_given:
        check_ties(names[0], ties)
    else:
        present = {short(n) for n in names[0]}
        ties = tuple(t for t in ties if len(present & set(t)) >= 2)
    return make_units(names, run.budget.unit, ties)


def budget_table(run: RunConfig, sizes: SizeTable) -> SizeTable:
    """The size table a budget counts in: the backend's, or the target file format's."""
    if run.budget.format == "gguf":
        gguf = run.budget.gguf
        return sizes.in_format(GgufFileSizes(gguf.types, gguf.embeddings))
    return sizes  # nominal bits, or gptq: the gptq backend's bytes are its checkpoint's


def allocation_budget(run: RunConfig, sizes: SizeTable) -> Budget:
    """Sizes and limit for `budget`/`budget_bytes` under `allocate.format`."""
    allowed = run.budget.allowed_bits
    n = len(sizes)
    file_format = run.budget.format
    units = budget_units(run, sizes)
    by_blocks = run.budget.unit == "block"

    def unit_bytes(table: SizeTable) -> list[dict[int, int]]:
        return [
            {b: sum(table.linear_bytes(u.block, j, b) for j in u.linears) for b in allowed}
            for u in units
        ]

    if run.budget.bytes is not None:
        table = budget_table(run, sizes)
        per_unit = unit_bytes(table)
        target = {"budget_bytes": run.budget.bytes}
        limit = run.budget.bytes - table.fixed_bytes()
    elif file_format is None and by_blocks:
        per_unit = [{b: b for b in allowed} for _ in range(n)]
        target = {"budget": run.budget.avg_bits}
        limit = average_bits_budget(run.budget.avg_bits, n)  # block-bits
    elif file_format is None:  # nominal bits weighted by each unit's weights
        weights = [sum(sizes.linear_weights[u.block][j] for j in u.linears) for u in units]
        per_unit = [{b: b * w for b in allowed} for w in weights]
        target = {"budget": run.budget.avg_bits}
        limit = math.floor(run.budget.avg_bits * sum(weights) + 1e-9)
    else:
        table = budget_table(run, sizes)
        per_unit = unit_bytes(table)
        target = {"budget": run.budget.avg_bits}
        limit = math.floor(run.budget.avg_bits * sum(table.weights) / 8 + 1e-9)
    if not by_blocks:
        target["unit"] = run.budget.unit
        ties = tied_labels(units)
        if ties:
            target["ties"] = ties
    if file_format is not None:
        target["format"] = file_format
    if file_format == "gguf":  # the types decide the sizes, hence the plan
        target["types"] = {str(b): run.budget.gguf.types[b] for b in allowed}
        target["embeddings"] = run.budget.gguf.embeddings
    return Budget(per_unit, limit, target, units)


def achieved(run: RunConfig, sizes: SizeTable, bits: tuple) -> dict:
    """What the plan holds in the file the budget counts: bits per weight of the blocks,
    per block, and the file's tensor bytes. Without a format the record's own `avg_bits`
    and `weight_bytes` are what the budget counted: {}."""
    if run.budget.format is None:
        return {}
    table = budget_table(run, sizes)
    block_bytes = [table.block_bytes(i, b) for i, b in enumerate(bits)]
    return {
        "format": run.budget.format,
        "bits_per_weight": round(8 * sum(block_bytes) / sum(table.weights), 4),
        "block_bits_per_weight": [
            round(8 * b / w, 4) for b, w in zip(block_bytes, table.weights, strict=True)
        ],
        "bytes": sum(block_bytes) + table.fixed_bytes(),
    }


def check_budget(run: RunConfig, sizes: SizeTable) -> None:
    """Refuse a budget below the all-lowest or above the all-highest plan, in one line that
    shows the arithmetic: bytes of each at the budget's units, and the reachable range."""
    if not run.budget.wanted:
        return
    low, high = run.budget.allowed_bits[0], run.budget.allowed_bits[-1]
    if run.budget.bytes is None and run.budget.format is None:
        return  # nominal bits: checked with the config (lwq.config.checks)
    table = budget_table(run, sizes)
    n = len(table)
    fixed = table.fixed_bytes()
    at_low = [table.block_bytes(i, low) for i in range(n)]
    at_high = [table.block_bytes(i, high) for i in range(n)]
    lowest, highest = sum(at_low), sum(at_high)
    where = f" in the {run.budget.format} file" if run.budget.format else ""
    if run.budget.bytes is not None:
        given, low_end, high_end = run.budget.bytes, fixed + lowest, fixed + highest
        if low_end <= given <= high_end:
            return
        side = "below the all-lowest" if given < low_end else "above the all-highest"
        raise LwqError(
            f"budget_bytes={given}{where} is {side} plan: {fixed} fixed bytes + "
            f"{_blocks(at_low)} at {low} bits = {low_end}, + {_blocks(at_high)} at {high} "
            f"bits = {high_end}; give budget_bytes in {low_end}..{high_end}"
        )
    weights = sum(table.weights)
    low_bpw, high_bpw = 8 * lowest / weights, 8 * highest / weights
    given = run.budget.avg_bits
    if low_bpw - 1e-9 <= given <= high_bpw + 1e-9:
        return
    side = "below the all-lowest" if given < low_bpw else "above the all-highest"
    raise LwqError(
        f"budget={given:g} bits per weight{where} is {side} plan: {_blocks(at_low)} at {low} "
        f"bits = {lowest}, {_blocks(at_high)} at {high} bits = {highest}, for {weights} "
        f"weights (8 x bytes / weights = {low_bpw:.4f}..{high_bpw:.4f}); give budget in that "
        "range"
    )


def _blocks(per_block: list[int]) -> str:
    """'30 blocks x 1783296 bytes', or the spread when blocks differ."""
    if len(set(per_block)) == 1:
        return f"{len(per_block)} blocks x {per_block[0]} bytes"
    return f"{len(per_block)} blocks of {min(per_block)}..{max(per_block)} bytes"


def describe(run: RunConfig, sizes: SizeTable, bits: tuple | None) -> str:
    """The dry run's budget line: the target in its units and, once the allocator's plan is
    known (`bits`), what that plan achieves in the same units."""
    budget = allocation_budget(run, sizes)
    where = f" in the {run.budget.format} file" if run.budget.format else ""
    if run.budget.bytes is not None:
        target = (
            f"budget: {run.budget.bytes} bytes{where} = {run.budget.bytes - budget.limit} "
            f"fixed + {budget.limit} for the blocks' linears"
        )
    elif run.budget.format is None and run.budget.unit == "block":
        target = (
            f"budget: {run.budget.avg_bits:g} nominal bits (the mean of the blocks' widths) = "
            f"{budget.limit} block-bits over {len(sizes)} blocks"
        )
    elif run.budget.format is None:
        target = (
            f"budget: {run.budget.avg_bits:g} nominal bits per weight = {budget.limit} "
            f"bit-weights over {len(budget.units)} {run.budget.unit} units"
        )
    else:
        target = (
            f"budget: {run.budget.avg_bits:g} bits per weight{where} = {budget.limit} bytes "
            "of the blocks' linears"
        )
    if bits is None and run.budget.method == "search":  # known only once the model runs
        return target + "; the plan is the search's, found by the sweep"
    if bits is None:
        return target + "; the plan follows from the sensitivity table (not cached yet)"
    got = achieved(run, sizes, bits)
    if not got:  # the backend's own accounting, as the record gives it
        cost = sizes.cost(Plan(bits))
        return target + (
            f"; the allocated plan: {cost.avg_bits:.4f} nominal bits, "
            f"{cost.bits_per_weight:.4f} bits per weight, {cost.weight_bytes} bytes"
        )
    return target + (
        f"; the allocated plan: {got['bits_per_weight']:.4f} bits per weight, "
        f"{got['bytes']} bytes{where}"
    )
