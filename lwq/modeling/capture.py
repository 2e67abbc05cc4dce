"""The calibration inputs of decoder blocks, carried from one block to the next.

A calibrated quantizer (GPTQ) needs, for block i, the hidden states that enter it when
the calibration sequences run through the model. One forward pass of the model records
the hidden states entering block 0 and the keyword arguments the decoder hands each
block (rotary embeddings, masks; models with sliding-window layers give layers different
masks, so they are kept per block). After that only blocks run: `advance(block, i)`
turns the inputs of block i into those of block i + 1 through whichever block is given
(the original, or the one already quantized in sequential mode).
"""

from __future__ import annotations

import contextlib

import torch

from lwq.errors import LwqError


class _Stop(Exception):
    """Raised by a pre-hook (the last block's in `capture`, a linear's in `feed`): the rest
    of the forward is not needed."""


def _stop(module, args) -> None:
    raise _Stop


def _hidden(value) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


class BlockInputs:
    """Hidden states entering one block, batch by batch, and every block's kwargs."""

    def __init__(
        self,
        hidden: list[torch.Tensor],
        kwargs: list[list[dict]],
        index: int = 0,
        tuple_outputs: bool = False,
    ):
        self.hidden = hidden  # one (B, S, D) tensor per calibration batch
        self.kwargs = kwargs  # kwargs[block][batch]
        self.index = index  # the block these hidden states enter
        self.tuple_outputs = tuple_outputs  # the blocks return (hidden, ...), not a tensor

    @classmethod
    @torch.no_grad()
    def capture(cls, model, blocks, calibration: torch.Tensor, batch_size: int = 8):
        """Run `calibration` (N, S) ids once; keep block 0's inputs and all blocks' kwargs."""
        device = next(model.parameters()).device
        hidden: list[torch.Tensor] = []
        kwargs: list[list[dict]] = [[] for _ in blocks]
        last = len(blocks) - 1

        def pre_hook(i):
            def hook(module, args, kw):
                if i == 0:
                    hidden.append(args[0] if args else kw["hidden_states"])
                kwargs[i].append({k: v for k, v in kw.items() if k != "hidden_states"})
                if i == last:
                    raise _Stop

            return hook

        returned: list[bool] = []
        handles = [
            b.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, b in enumerate(blocks)
        ]
        if last > 0:  # the last block never runs (its pre-hook stops the model)
            handles.append(
                blocks[0].register_forward_hook(
                    lambda _m, _a, out: returned.append(isinstance(out, (tuple, list)))
                )
            )
        try:
            for start in range(0, len(calibration), batch_size):
                with contextlib.suppress(_Stop):
                    ids = calibration[start : start + batch_size].to(device)
                    model(input_ids=ids, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        if not hidden or len(hidden) != len(kwargs[last]):
            raise LwqError("calibration inputs did not reach every block; is this a decoder?")
        return cls(hidden, kwargs, tuple_outputs=any(returned))

    def copy(self) -> BlockInputs:
        return BlockInputs(list(self.hidden), self.kwargs, self.index, self.tuple_outputs)

    @torch.no_grad()
    def run(self, block: torch.nn.Module) -> list[torch.Tensor]:
        """`block` (standing at position `index`) applied to every batch."""
        kwargs = self.kwargs[self.index]
        return [_hidden(block(h, **kw)) for h, kw in zip(self.hidden, kwargs, strict=True)]

    @torch.no_grad()
    def feed(self, block: torch.nn.Module, until: torch.nn.Module | None = None) -> None:
        """Every batch into `block` (standing at `index`) for its hooks, outputs dropped;
        with `until`, each forward stops once that module is called (its pre-hooks
        registered before run first). What is computed before the stop equals a whole
        forward's, so a calibrator reading inputs up to `until` gets the same numbers."""
        handle = None if until is None else until.register_forward_pre_hook(_stop)
        try:
            for hidden, kwargs in zip(self.hidden, self.kwargs[self.index], strict=True):
                with contextlib.suppress(_Stop):
                    block(hidden, **kwargs)
        finally:
            if handle is not None:
                handle.remove()

    def advance(self, block: torch.nn.Module) -> None:
        """Become the inputs of the next block, through `block` at the current position."""
        self.hidden = self.run(block)
        self.index += 1


class _HandOn(torch.nn.Module):
    """Stands in for a block that is skipped: returns its input untouched, or, for the
    last skipped block, the recorded hidden states entering the first block that runs
    (one tensor per forward call, in the order of the calls)."""

    def __init__(self, feed: list[torch.Tensor] | None, as_tuple: bool) -> None:
        super().__init__()
        self.feed = feed
        self.as_tuple = as_tuple  # what the decoder unpacks: the block's own output type
        self.calls = 0

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if self.feed is not None:
            hidden = self.feed[self.calls]
            self.calls += 1
        return (hidden,) if self.as_tuple else hidden


@contextlib.contextmanager
def starting_at(blocks: torch.nn.ModuleList, inputs: BlockInputs):
    """Within it, each forward of the model (one per calibration batch, in the batches'
    order) runs blocks `inputs.index`.. and the head only: the blocks before are stand-ins,
    the last of which hands on `inputs.hidden`. The outputs equal a full forward's whenever
    the skipped blocks are those that produced `inputs`, at a fraction of the cost."""
    start = inputs.index
    skipped = [blocks[i] for i in range(start)]
    for i in range(start):
        feed = inputs.hidden if i == start - 1 else None
        blocks[i] = _HandOn(feed, inputs.tuple_outputs)
    try:
        yield
    finally:
        for i, block in enumerate(skipped):
            blocks[i] = block
