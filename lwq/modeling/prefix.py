"""Reusing the hidden states of evaluated plans: run a new plan from its first new block.

Two plans whose blocks 0..j-1 are the same variants compute the same hidden states
entering block j for the same input. `PrefixCache` keeps those states for the plans it
has seen (keyed by a digest of the input and of the keys of the blocks before), and
within `reusing(...)` every forward of the model starts at the deepest block it has
states for: the blocks before it are skipped (the last skipped one hands on the kept
states), so the outputs are bit-identical to a full forward with the same batching.

The input's digest is taken where block 0 is called: its hidden states and every tensor
keyword the decoder hands it (masks, positions), so two forwards match only if the whole
input matched. What is kept is chosen by the caller (`keep_at`: the boundaries later
plans will start from, `order_for_reuse`/`boundaries_wanted`); the cache holds at most
`memory_gb`, evicts what no later plan wants first, then the least recently used.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

GB = 1e9
Keys = Sequence[tuple]  # one variant key per block (lwq.quant.install.PlanApplier.keys)


def prefix_digests(keys: Keys) -> list[str]:
    """digests[j] names blocks 0..j-1's variants (digests[0]: no block), j = 0..L."""
    out, running = [], hashlib.sha256()
    out.append(running.hexdigest())
    for key in keys:
        running.update(repr(key).encode("utf-8"))
        out.append(running.hexdigest())
    return out


def common_prefix(a: Keys, b: Keys) -> int:
    """Blocks the two plans share from the start."""
    n = 0
    for x, y in zip(a, b, strict=True):
        if x != y:
            break
        n += 1
    return n


def order_for_reuse(plans: list[Keys]) -> list[int]:
    """Indices of `plans` in the order that reuses most: lexicographic by keys, so each
    plan follows the one sharing its longest prefix (a depth-first walk of their trie)."""
    return sorted(range(len(plans)), key=lambda i: [repr(k) for k in plans[i]])


def boundaries_wanted(done: Keys, later: list[Keys]) -> set[int]:
    """Block boundaries j > 0 where a later plan would start from `done`'s states."""
    wanted = set()
    for plan in later:
        j = common_prefix(done, plan)
        if 0 < j < len(done):
            wanted.add(j)
    return wanted


def block_forwards(plans: list[Keys], depth: int) -> tuple[int, int]:
    """(blocks run, blocks a full forward runs) per input for `plans` in this order, every
    wanted boundary kept: what the reuse saves, computed from the plans alone."""
    run = 0
    for n, plan in enumerate(plans):
        start = max((common_prefix(plan, before) for before in plans[:n]), default=0)
        run += depth - min(start, depth - 1)
    return run, depth * len(plans)


class _Entry:
    __slots__ = ("states", "tuple_outputs")

    def __init__(self, states: torch.Tensor, tuple_outputs: bool) -> None:
        self.states, self.tuple_outputs = states, tuple_outputs


class PrefixCache:
    """Hidden states entering blocks, by (input digest, block, digest of the blocks before)."""

    def __init__(self, memory_gb: float, on: str = "host") -> None:
        self.limit = int(memory_gb * GB)
        self.on = on  # "host" or "device" (the model's)
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.held = 0  # bytes
        self.blocks_run = 0  # per forward and block, for the savings figure
        self.blocks_skipped = 0

    def wanted_only(self, wanted: set[tuple[int, str]]) -> None:
        """Drop every entry no later plan starts from ((block, prefix digest) pairs)."""
        for key in [k for k in self._entries if (k[1], k[2]) not in wanted]:
            self._drop(key)

    @contextlib.contextmanager
    def reusing(self, blocks: nn.ModuleList, keys: Keys, keep_at: set[int]):
        """Within: forwards of the model with `blocks` as installed (variant `keys`) start
        at the deepest kept block and keep the states entering the blocks in `keep_at`."""
        digests = prefix_digests(keys)
        run = _Forward(self, digests, keep_at, len(blocks))
        originals = list(blocks)
        for i, block in enumerate(originals):
            blocks[i] = _Stage(block, i, run)
        try:
            yield
        finally:
            for i, block in enumerate(originals):
                blocks[i] = block

    def _find(self, inputs: str, digests: list[str]) -> tuple[int, _Entry | None]:
        for j in range(len(digests) - 2, 0, -1):  # the deepest first; never past the last block
            entry = self._entries.get((inputs, j, digests[j]))
            if entry is not None:
                self._entries.move_to_end((inputs, j, digests[j]))
                return j, entry
        return 0, None

    def _keep(self, key: tuple, states: torch.Tensor, tuple_outputs: bool) -> None:
        if key in self._entries:
            return
        size = states.numel() * states.element_size()
        if size > self.limit:
            return
        while self.held + size > self.limit and self._entries:
            self._drop(next(iter(self._entries)))  # the least recently used
        kept = states.detach().to("cpu" if self.on == "host" else states.device, copy=True)
        self._entries[key] = _Entry(kept, tuple_outputs)
        self.held += size

    def _drop(self, key: tuple) -> None:
        entry = self._entries.pop(key)
        self.held -= entry.states.numel() * entry.states.element_size()


class _Forward:
    """The state of the forward in progress: where it starts and what it hands on."""

    def __init__(self, cache: PrefixCache, digests: list[str], keep_at: set[int], depth: int):
        self.cache, self.digests, self.keep_at, self.depth = cache, digests, keep_at, depth
        self.inputs = ""
        self.start = 0
        self.entry: _Entry | None = None
        self.tuple_outputs: bool | None = None

    def begin(self, hidden: torch.Tensor, kwargs: dict) -> None:
        """At block 0: digest the input, find the deepest kept states for it."""
        self.inputs = _input_digest(hidden, kwargs)
        self.start, self.entry = self.cache._find(self.inputs, self.digests)
        self.cache.blocks_run += self.depth - self.start
        self.cache.blocks_skipped += self.start


class _Stage(nn.Module):
    """Block i during `reusing`: skipped before the forward's start (the last skipped one
    hands on the kept states), run from it on, its input kept where wanted."""

    def __init__(self, block: nn.Module, index: int, run: _Forward) -> None:
        super().__init__()
        self.block, self.index, self.run = block, index, run

    def forward(self, *args, **kwargs):
        run, i = self.run, self.index
        hidden = args[0] if args else kwargs["hidden_states"]
        if i == 0:
            run.begin(hidden, kwargs)
        if i < run.start:
            if i < run.start - 1:
                return (hidden,) if run.entry.tuple_outputs else hidden
            handed = run.entry.states.to(hidden.device)
            return (handed,) if run.entry.tuple_outputs else handed
        if i in run.keep_at and i > run.start:
            run.cache._keep((run.inputs, i, run.digests[i]), hidden, bool(run.tuple_outputs))
        out = self.block(*args, **kwargs)
        run.tuple_outputs = isinstance(out, (tuple, list))
        return out


def _input_digest(hidden: torch.Tensor, kwargs: dict) -> str:
    """What block 0 sees: its hidden states and every tensor keyword, shapes included."""
    h = hashlib.blake2b(digest_size=16)
    for name, value in [("hidden_states", hidden), *sorted(kwargs.items())]:
        for n, tensor in enumerate(_tensors(value)):
            h.update(f"{name}.{n}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            raw = tensor.detach().reshape(-1).cpu()
            h.update((raw.view(torch.uint8) if raw.numel() else raw).numpy().tobytes())
    return h.hexdigest()


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []
