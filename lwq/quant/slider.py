"""SliderQuant (Wang et al., ICLR 2026) in its weight-only mode: windows of blocks trained
together so the quantized window's output matches the full-precision window's.

What is learned, per linear (as the authors' W2A16 mode): asymmetric per-output-channel
(per-group with `group_size`) clipping, max and min scaled by sigmoid(u) and sigmoid(l)
(u = l = 4 at the start: 0.982), with straight-through rounding; and a rank-`rank` update
inside the quantizer, W_q = Q(W + B A / rank), A Kaiming, B zero, the range recomputed
from W + B A / rank at every forward. Two streams start from block 0's inputs at each pass:
a window runs on the quantized stream's input and is trained (MSE, a fresh AdamW per
window, no weight decay, linear decay) to match the full-precision window on the
full-precision stream; both then advance to the next window's first block. Two passes
over the schedule (lwq.quant.slider_schedule), the first with only the first half of
each linear's input columns quantized, each with half the epochs; nothing is frozen
between windows. At the end the weights are merged to codes, scales and zero points
(zero points clamped to the code range) and installed as plain linears on that grid.

A block is trained with its neighbours, so its result depends on the whole plan: the
unit reaches every block (one calibration per plan, lwq.quant.engine). Calibration runs
in float32 (bf16 autocast is not done yet).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from lwq.errors import LwqError
from lwq.modeling.blocks import block_linears
from lwq.quant.base import (
    BACKENDS,
    FULL_PRECISION,
    ContractCase,
    Window,
    as_linear,
    full_precision_bytes,
)
from lwq.quant.rtn import RTN
from lwq.quant.slider_schedule import parse_windows, schedule

BITS_ATTR = "lwq_slider_bits"  # set on a merged linear: the width its weights are on
SCALE_LIMITS = (1e-5, 1e4)  # the authors' clamp of scales (CLIPMIN) and zero points


class WholePlan(Window):
    """Every block is trained with its neighbours through two passes: all bits matter."""

    def reach(self, i: int, n: int) -> range:
        return range(n)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


class LearnedWeight(nn.Module):
    """A weight quantized with learned clipping and a low-rank update inside the quantizer."""

    def __init__(self, weight: torch.Tensor, bits: int, group_size: int, rank: int, init: float):
        super().__init__()
        out_features, in_features = weight.shape
        self.register_buffer("weight", weight.detach().float().clone())
        self.bits, self.group_size, self.rate = bits, group_size or in_features, 1.0
        rows = out_features * (in_features // self.group_size)
        self.upper = nn.Parameter(torch.full((rows, 1), init))
        self.lower = nn.Parameter(torch.full((rows, 1), init))
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        self.lora_scale = 1.0 / rank

    def _grid(self, clamp_zero: bool):
        w = self.weight + self.lora_scale * (self.lora_b @ self.lora_a)
        groups = w.reshape(-1, self.group_size)
        high = torch.sigmoid(self.upper) * groups.amax(1, keepdim=True)
        low = torch.sigmoid(self.lower) * groups.amin(1, keepdim=True)
        levels = 2**self.bits - 1
        scale = ((high - low) / levels).clamp(*SCALE_LIMITS)
        zero = (-low / scale).clamp(-SCALE_LIMITS[1], SCALE_LIMITS[1]).round()
        if clamp_zero:
            zero = zero.clamp(0, levels)
        return w, groups, scale, zero, levels

    def forward(self) -> torch.Tensor:
        w, groups, scale, zero, levels = self._grid(clamp_zero=False)
        codes = (_round_ste(groups / scale) + zero).clamp(0, levels)
        dequantized = ((codes - zero) * scale).reshape(w.shape)
        if self.rate >= 1:
            return dequantized
        cut = math.ceil(w.shape[1] * self.rate)  # first pass: the first columns only
        return torch.cat([dequantized[:, :cut], w[:, cut:]], dim=1)

    @torch.no_grad()
    def merged(self) -> torch.Tensor:
        """The final weights: integer codes, scales and zero points (clamped to the codes)."""
        w, groups, scale, zero, levels = self._grid(clamp_zero=True)
        codes = (torch.round(groups / scale) + zero).clamp(0, levels)
        return ((codes - zero) * scale).reshape(w.shape)


class LearnedLinear(nn.Module):
    def __init__(self, linear: nn.Linear, learned: LearnedWeight) -> None:
        super().__init__()
        self.learned = learned
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.learned().to(x.dtype), self.bias)


@BACKENDS.register("slider")
class SliderQuant:
    name = "slider"
    unit = WholePlan()
    supported_bits = frozenset({2, 3, 4, 8, FULL_PRECISION})
    contract = ContractCase(
        lambda: nn.Linear(100, 64),
        4,
        "group_size=32 must divide the input size 100",
        sweep_settings={"epochs": 2, "group_size": 32},
        settings={"epochs": 2, "group_size": 32},
    )

    def __init__(
        self,
        window: int = 2,
        stride: int = 1,
        fill: int = 4,
        windows: str | None = None,
        group_size: int = 0,
        rank: int = 4,
        epochs: int = 60,
        lr_lora: float = 5e-4,
        lr_clip: float = 1e-2,
        clip_init: float = 4.0,
        seed: int = 2,
    ) -> None:
        schedule(max(fill, 1), window, stride, fill)  # refuses a bad window/stride/fill now
        if group_size < 0 or (group_size and group_size % 8):
            raise LwqError(
                f"quant.settings.group_size must be 0 or a multiple of 8, got {group_size}"
            )
        if epochs < 2 or rank < 1:
            raise LwqError(
                "quant.settings.epochs must be 2 or more (two passes) and rank 1 or more"
            )
        self.window, self.stride, self.fill, self.windows = window, stride, fill, windows
        self.group_size, self.rank, self.epochs = group_size, rank, epochs
        self.lr_lora, self.lr_clip, self.clip_init, self.seed = lr_lora, lr_clip, clip_init, seed

    def settings(self) -> dict:
        return {
            "window": self.window,
            "stride": self.stride,
            "fill": self.fill,
            "windows": self.windows,
            "group_size": self.group_size,
            "rank": self.rank,
            "epochs": self.epochs,
            "lr_lora": self.lr_lora,
            "lr_clip": self.lr_clip,
            "clip_init": self.clip_init,
            "seed": self.seed,
        }

    def quantize(self, blocks, bits, inputs):
        """Every block of `blocks` (copies, mutated) trained window by window for `bits`."""
        n = len(blocks)
        if self.windows:
            windows = parse_windows(self.windows, n)
        else:
            windows = schedule(n, self.window, self.stride, self.fill)
        full = [copy.deepcopy(b).requires_grad_(False) for b in blocks]
        learned = [self._wrap(b, k) for b, k in zip(blocks, bits, strict=True)]
        generator = torch.random.fork_rng(devices=[])
        with generator, torch.enable_grad():
            torch.manual_seed(self.seed)
            for rate, epochs in ((0.5, self.epochs // 2), (1.0, self.epochs - self.epochs // 2)):
                for weights in learned:
                    for w in weights:
                        w.rate = rate
                self._pass(blocks, full, learned, windows, inputs, epochs)
        for block, k in zip(blocks, bits, strict=True):
            self._merge(block, k)
        return blocks

    def _wrap(self, block: nn.Module, bits: int) -> list[LearnedWeight]:
        if bits == FULL_PRECISION:
            return []
        block.requires_grad_(False)
        learned = []
        for name, module in block_linears(block):
            linear = as_linear(self.name, module)
            size = self.group_size or linear.in_features
            if linear.in_features % size:
                raise LwqError(
                    f"{name}: quant=slider group_size={size} must divide the input size "
                    f"{linear.in_features}; use group_size=0 (per channel)"
                )
            weight = LearnedWeight(linear.weight, bits, self.group_size, self.rank, self.clip_init)
            block.set_submodule(name, LearnedLinear(linear, weight))
            learned.append(weight)
        return learned

    def _pass(self, blocks, full, learned, windows, inputs, epochs: int) -> None:
        quantized, reference = inputs.copy(), inputs.copy()
        base = inputs.index  # the blocks given start at this block of the model
        for window in windows:
            while quantized.index - base < window.start:
                quantized.advance(blocks[quantized.index - base])
                reference.advance(full[reference.index - base])
            weights = [w for j in window for w in learned[j]]
            if not weights:
                continue
            with torch.no_grad():
                targets = [
                    _run(full, window, h, inputs, base, b) for b, h in enumerate(reference.hidden)
                ]
            batch = quantized.hidden[0].shape[0]
            lora = [p for w in weights for p in (w.lora_a, w.lora_b)]
            clips = [p for w in weights for p in (w.upper, w.lower)]
            optimizer = torch.optim.AdamW(
                [
                    {"params": lora, "lr": self.lr_lora * batch},
                    {"params": clips, "lr": self.lr_clip * batch},
                ],
                weight_decay=0.0,
            )
            decay = _linear_decay(optimizer, max(epochs * len(targets), 1))
            for _ in range(epochs):
                for b, hidden in enumerate(quantized.hidden):
                    loss = F.mse_loss(_run(blocks, window, hidden, inputs, base, b), targets[b])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    decay.step()

    @staticmethod
    def _merge(block: nn.Module, bits: int) -> None:
        for name, module in list(block.named_modules()):
            if isinstance(module, LearnedLinear):
                weight = module.learned.merged()
                linear = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None)
                linear.weight = nn.Parameter(
                    weight.to(module.learned.weight.dtype), requires_grad=False
                )
                if module.bias is not None:
                    linear.bias = nn.Parameter(module.bias, requires_grad=False)
                setattr(linear, BITS_ATTR, bits)
                block.set_submodule(name, linear)

    def state(self, block: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in block.state_dict().items()}

    def restore(self, original: nn.Module, bits: int, state: dict) -> nn.Module:
        original.load_state_dict(state, strict=True)
        for _, module in block_linears(original):
            setattr(module, BITS_ATTR, bits)
        return original

    def for_eval(self, block: nn.Module) -> nn.Module:
        return block

    def held_bytes(self, module: nn.Module) -> int:
        return self.weight_bytes(module, getattr(module, BITS_ATTR, FULL_PRECISION))

    def weight_bytes(self, module: nn.Module, bits: int) -> int:
        """Codes at `bits`, and per group a float16 scale and a `bits`-wide zero point: the
        grid rtn stores (its include_zero range), at this group size."""
        if bits == FULL_PRECISION:
            return full_precision_bytes(module)
        in_features = as_linear(self.name, module).in_features
        size = self.group_size or in_features
        if in_features % size:
            raise LwqError(
                f"quant=slider group_size={size} must divide the input size {in_features}"
            )
        return RTN(group_size=size).weight_bytes(module, bits)


def _linear_decay(optimizer, steps: int):
    """The learning rates fall linearly to 0 over `steps` (no warm-up)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)


def _run(
    blocks, window: range, hidden: torch.Tensor, inputs, base: int, batch: int
) -> torch.Tensor:
    """`hidden` through the window's blocks, each with its own keyword arguments."""
    for j in window:
        out = blocks[j](hidden, **inputs.kwargs[base + j][batch])
        hidden = out[0] if isinstance(out, (tuple, list)) else out
    return hidden
