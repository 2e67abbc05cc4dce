"""LIM / ldi: how much a block changes its input (paper: Layer Input Modification).

LIM_i = 1 - cos(h_in, h_out) per token, with h_in/h_out captured by hooks on block i
itself (not `output_hidden_states`, whose last entry has the final norm applied), averaged
over all calibration tokens (`reduce="token"`) or per sequence first (`"sequence"`).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from lwq.errors import LwqError
from lwq.metrics.base import METRICS, Metric, Scores

REDUCTIONS = ("token", "sequence")


def _hidden(value) -> torch.Tensor:
    """The hidden states in a block's input args or output (tensor, or tuple led by it)."""
    return value[0] if isinstance(value, (tuple, list)) else value


class _BlockDeltas:
    """Forward hooks on every block accumulating per-token 1 - cos(h_in, h_out)."""

    def __init__(self, blocks: torch.nn.ModuleList, reduce: str) -> None:
        self.reduce = reduce
        self.sums = [0.0] * len(blocks)
        self.counts = [0] * len(blocks)
        self._inputs: dict[int, torch.Tensor] = {}
        self._handles = []
        for i, block in enumerate(blocks):
            self._handles.append(block.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            self._handles.append(block.register_forward_hook(self._post(i)))

    def _pre(self, i: int):
        def hook(module, args, kwargs):
            self._inputs[i] = _hidden(args) if args else kwargs["hidden_states"]

        return hook

    def _post(self, i: int):
        def hook(module, args, output):
            h_in = self._inputs.pop(i).float()  # (B, S, D)
            h_out = _hidden(output).float()
            delta = 1.0 - F.cosine_similarity(h_in, h_out, dim=-1)  # (B, S)
            if self.reduce == "sequence":
                self.sums[i] += delta.mean(dim=1).sum().item()
                self.counts[i] += delta.shape[0]
            else:
                self.sums[i] += delta.sum().item()
                self.counts[i] += delta.numel()

        return hook

    def remove(self) -> list[float]:
        for handle in self._handles:
            handle.remove()
        return [s / c for s, c in zip(self.sums, self.counts, strict=True)]


@torch.no_grad()
def ldi_scores(
    model, blocks, calibration: torch.Tensor, *, reduce: str = "token", batch_size: int = 8
) -> Scores:
    """Mean 1 - cos(h_in, h_out) per block over `calibration` (N, S) token ids.

    Runs the decoder stack only (`base_model`): the hooks need no logits, and the LM head
    is a fifth of a small model's forward FLOPs (SmolLM2: 49 k x 576) and its largest tensor.
    """
    check_ldi({"reduce": reduce, "batch_size": batch_size})
    device = next(model.parameters()).device
    stack = getattr(model, "base_model", model)  # HF: the model without its head
    deltas = _BlockDeltas(blocks, reduce)
    try:
        for start in range(0, len(calibration), batch_size):
            stack(input_ids=calibration[start : start + batch_size].to(device), use_cache=False)
    finally:
        values = deltas.remove()
    return Scores(tuple(values), higher_is_important=True)


def check_ldi(settings: dict) -> None:
    reduce = settings.get("reduce", "token")
    if reduce not in REDUCTIONS:
        raise LwqError(f"metric.settings.reduce must be token or sequence, got {reduce!r}")
    batch_size = settings.get("batch_size", 8)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LwqError(f"metric.settings.batch_size must be a positive integer, got {batch_size!r}")


METRICS.register("ldi", "lim")(Metric("ldi", ldi_scores, needs_calibration=True, check=check_ldi))
