"""The sweep's side of prefix reuse (lwq.modeling.prefix): the order its points are
evaluated in, and for each point which block boundaries to keep for the points after it.

Plans are compared by their blocks' variant keys (lwq.quant.engine.Engine.keys), so two
plans share a prefix only where the installed blocks are the same variants. Pruned points
(blocks taken out of the model) run without reuse, after the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lwq.commands.points import Point
from lwq.modeling.prefix import (
    PrefixCache,
    block_forwards,
    boundaries_wanted,
    order_for_reuse,
    prefix_digests,
)


@dataclass
class SweepReuse:
    """A prefix cache and the keys of the points still to evaluate, in order."""

    cache: PrefixCache | None
    engine: object
    blocks: object
    keys: dict[str, tuple] = field(default_factory=dict)  # point key -> variant keys

    def order(self, points: list[Point]) -> list[Point]:
        """`points` in the order that reuses most (pruned points last, as given); as
        planned when that order reuses as much."""
        if self.cache is None:
            return points
        reusable = [p for p in points if not p.removed]
        self.keys = {p.key: self.engine.keys(p.plan) for p in reusable}
        order = order_for_reuse([self.keys[p.key] for p in reusable])
        ordered = [reusable[i] for i in order]
        if self.savings(ordered)[0] >= self.savings(reusable)[0]:
            ordered = reusable
        return ordered + [p for p in points if p.removed]

    def savings(self, points: list[Point]) -> tuple[int, int]:
        """(blocks run, blocks without reuse) per input over `points` in this order."""
        plans = [self.keys[p.key] for p in points if p.key in self.keys]
        return block_forwards(plans, len(self.blocks)) if plans else (0, 0)

    def context(self, point: Point, later: list[Point]):
        """The context factory the point's held-out passes run in, or None."""
        if self.cache is None or point.key not in self.keys:
            return None
        keys = self.keys[point.key]
        later_keys = [self.keys[p.key] for p in later if p.key in self.keys]
        wanted = set()
        for plan in later_keys:
            digests = prefix_digests(plan)
            wanted |= {(j, digests[j]) for j in range(1, len(plan))}
        self.cache.wanted_only(wanted | _own(keys))
        keep_at = boundaries_wanted(keys, later_keys)
        return lambda: self.cache.reusing(self.blocks, keys, keep_at)


def _own(keys: tuple) -> set[tuple[int, str]]:
    """The point's own prefixes: it starts from the states earlier points kept there."""
    digests = prefix_digests(keys)
    return {(j, digests[j]) for j in range(1, len(keys))}
