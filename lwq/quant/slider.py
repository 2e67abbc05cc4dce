"""SliderQuant (Wang et al., ICLR 2026) in its weight-only mode: windows of blocks trained
together so the quantized window's output matches the full-precision window's.

What is learned, per linear (as the authors' W2A16 mode): asymmetric per-output-channel
(per-group with `group_size`; a width that is not a multiple of it ends in one shorter
group, as rtn's) clipping, max and min scaled by sigmoid(u) and sigmoid(l)
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
in the model's dtype, or with `autocast: bf16` (the default on CUDA) under bfloat16
autocast with float32 learned tensors.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Protocol

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

PARAMETERS = ("upper", "lower", "lora_a", "lora_b")  # what a LearnedWeight learns
FLOAT32 = 4  # bytes of a learned number, its gradient and each AdamW moment
GIB = 2**30
AUTOCAST = ("auto", "off", "bf16")  # auto: bf16 on CUDA, CPU_AUTOCAST on the CPU
CPU_AUTOCAST = "off"  # bf16 was slower on ref-tiny here (docs/backends.md: 63-78 s vs 81-88 s)

BITS_ATTR = "lwq_slider_bits"  # set on a merged linear: the width its weights are on
SCALE_BUFFER, ZERO_BUFFER = "lwq_scale", "lwq_zero"  # a merged linear's grid, (rows, groups)
SCALE_LIMITS = (1e-5, 1e4)  # the authors' clamp of scales (CLIPMIN) and zero points


class Resume(Protocol):
    """Where a calibration keeps its state after each window (lwq.quant.store.ResumeFile)."""

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None: ...

    def save(self, tensors: dict[str, torch.Tensor], position: dict[str, str]) -> None: ...


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
        self.dtype = weight.dtype  # the merged weights go back to the loaded dtype
        self.bits, self.group_size, self.rate = bits, group_size or in_features, 1.0
        # a width that is not a multiple of the group ends in one shorter group (as rtn),
        # padded to a whole group here and cut off again after rounding
        self.groups = math.ceil(in_features / self.group_size)
        self.pad = self.groups * self.group_size - in_features
        rows = out_features * self.groups
        self.upper = nn.Parameter(torch.full((rows, 1), init))
        self.lower = nn.Parameter(torch.full((rows, 1), init))
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        self.lora_scale = 1.0 / rank

    def _grid(self, clamp_zero: bool):
        w = self.weight + self.lora_scale * (self.lora_b @ self.lora_a)
        groups = self._grouped(w, 0.0)
        top = self._grouped(w, -math.inf) if self.pad else groups  # extremes of real columns
        bottom = self._grouped(w, math.inf) if self.pad else groups
        high = torch.sigmoid(self.upper) * top.amax(1, keepdim=True)
        low = torch.sigmoid(self.lower) * bottom.amin(1, keepdim=True)
        levels = 2**self.bits - 1
        scale = ((high - low) / levels).clamp(*SCALE_LIMITS)
        zero = (-low / scale).clamp(-SCALE_LIMITS[1], SCALE_LIMITS[1]).round()
        if clamp_zero:
            zero = zero.clamp(0, levels)
        return w, groups, scale, zero, levels

    def _grouped(self, w: torch.Tensor, fill: float) -> torch.Tensor:
        """(rows x groups, group_size): `w`'s groups, a short last group padded with `fill`."""
        padded = F.pad(w, (0, self.pad), value=fill) if self.pad else w
        return padded.reshape(-1, self.group_size)

    def _ungrouped(self, groups: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return groups.reshape(like.shape[0], -1)[:, : like.shape[1]]

    def forward(self) -> torch.Tensor:
        with torch.autocast(self.weight.device.type, enabled=False):  # the grid in float32
            return self._quantized()

    def _quantized(self) -> torch.Tensor:
        w, groups, scale, zero, levels = self._grid(clamp_zero=False)
        codes = (_round_ste(groups / scale) + zero).clamp(0, levels)
        dequantized = self._ungrouped((codes - zero) * scale, w)
        if self.rate >= 1:
            return dequantized
        cut = math.ceil(w.shape[1] * self.rate)  # first pass: the first columns only
        return torch.cat([dequantized[:, :cut], w[:, cut:]], dim=1)

    @torch.no_grad()
    def merged(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The final weights on their grid (integer codes, zero points clamped to the codes),
        and the grid: per (output row, group) the scale and the zero point, float32."""
        w, groups, scale, zero, levels = self._grid(clamp_zero=True)
        codes = (torch.round(groups / scale) + zero).clamp(0, levels)
        shape = (w.shape[0], self.groups)
        return self._ungrouped((codes - zero) * scale, w), scale.view(shape), zero.view(shape)


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
    resumes = True  # quantize takes `resume`: the engine hands it the plan's resume file
    supported_bits = frozenset({2, 3, 4, 8, FULL_PRECISION})
    contract = ContractCase(
        lambda: nn.Embedding(16, 64),
        4,
        "neither nn.Linear nor Conv1D",
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
        autocast: str = "auto",
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
        if autocast not in AUTOCAST:
            raise LwqError(
                f"quant.settings.autocast must be one of {', '.join(AUTOCAST)}, got {autocast!r}"
            )
        self.lr_lora, self.lr_clip, self.clip_init, self.seed = lr_lora, lr_clip, clip_init, seed
        self.autocast = autocast

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
            # added later: in the keys only when set, so earlier keys stay valid
            **({} if self.autocast == "auto" else {"autocast": self.autocast}),
        }

    def quantize(self, blocks, bits, inputs, resume: Resume | None = None):
        """Every block of `blocks` (copies, mutated) trained window by window for `bits`.

        With `resume` (lwq.quant.store.ResumeFile) each finished window is saved there and
        a calibration starts after the last window saved: the result is bit for bit that of
        an uninterrupted run (tests/test_slider_resume.py)."""
        n = len(blocks)
        windows = parse_windows(self.windows, n) if self.windows else self._schedule(n)
        full = [copy.deepcopy(b).requires_grad_(False) for b in blocks]
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(self.seed)  # before the wrap: A's Kaiming draw is seeded too
            learned = [self._wrap(b, k) for b, k in zip(blocks, bits, strict=True)]
            start_pass, start_window = _restore(resume, learned)
            for p, (rate, epochs) in enumerate(self._passes()):
                if p < start_pass:
                    continue
                for w in (w for weights in learned for w in weights):
                    w.rate = rate

                def finished(done: int, p=p) -> None:
                    if resume is not None:
                        resume.save(_checkpoint(learned), {"pass": str(p), "done": str(done)})

                first = start_window if p == start_pass else 0
                with self._autocast(inputs.hidden[0].device):
                    self._pass(blocks, full, learned, windows, inputs, epochs, first, finished)
        for block, k in zip(blocks, bits, strict=True):
            self._merge(block, k)
        return blocks

    def _autocast(self, device: torch.device):
        """bf16 autocast of the blocks' forward passes (`autocast`); the learned tensors
        and the quantizer's arithmetic stay float32 (LearnedWeight.forward)."""
        mode = self.autocast
        if mode == "auto":
            mode = "bf16" if device.type == "cuda" else CPU_AUTOCAST
        if mode == "off":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def _schedule(self, n: int) -> list[range]:
        return schedule(n, self.window, self.stride, self.fill)

    def _passes(self) -> tuple[tuple[float, int], tuple[float, int]]:
        """(share of input columns quantized, epochs) of each pass."""
        return (0.5, self.epochs // 2), (1.0, self.epochs - self.epochs // 2)

    def _wrap(self, block: nn.Module, bits: int) -> list[LearnedWeight]:
        if bits == FULL_PRECISION:
            return []
        block.requires_grad_(False)
        learned = []
        for name, module in block_linears(block):
            linear = as_linear(self.name, module)
            weight = LearnedWeight(linear.weight, bits, self.group_size, self.rank, self.clip_init)
            block.set_submodule(name, LearnedLinear(linear, weight))
            learned.append(weight)
        return learned

    def _pass(self, blocks, full, learned, windows, inputs, epochs: int, first, finished) -> None:
        """Windows `first`.. of one pass; `finished(k)` after each, k windows then done.

        Both streams start at block 0 and advance lazily to each window's first block; a
        window starting before the streams (some shallow schedules, e.g. L=3 W=S=2 F=2, go
        back) restarts them at block 0. So the streams entering a window are always those
        the blocks before it give with their current parameters, and a pass restarted at
        window `first` with the parameters saved after window first-1 has the very streams
        an unbroken pass had (recomputed, not saved: one forward through the blocks before
        the window costs less than writing 2 x samples x seq_len x hidden floats a window)."""
        quantized, reference = inputs.copy(), inputs.copy()
        base = inputs.index  # the blocks given start at this block of the model
        for k in range(first, len(windows)):
            window = windows[k]
            if quantized.index - base > window.start:  # behind the streams: start again
                quantized, reference = inputs.copy(), inputs.copy()
            while quantized.index - base < window.start:
                quantized.advance(blocks[quantized.index - base])
                reference.advance(full[reference.index - base])
            weights = [w for j in window for w in learned[j]]
            if weights:
                self._train(blocks, full, weights, window, quantized, reference, epochs)
            finished(k + 1)

    def _train(self, blocks, full, weights, window, quantized, reference, epochs: int) -> None:
        """One window: a fresh AdamW (so no optimiser state outlives it), MSE to the target."""
        base = quantized.index - window.start  # the model's index of blocks[0]
        with torch.no_grad():
            targets = [
                _run(full, window, h, reference, base, b) for b, h in enumerate(reference.hidden)
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
                loss = F.mse_loss(_run(blocks, window, hidden, quantized, base, b), targets[b])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                decay.step()

    def calibration_bytes(
        self, blocks, bits, samples: int, seq_len: int, hidden: int, dtype_bytes: int = 4
    ) -> dict[str, int]:
        """Bytes a calibration of `blocks` (meta tensors will do) for the plan's `bits` holds
        at its peak, by part: hidden states and block copies in the model's dtype
        (`dtype_bytes`, 4 = float32 as on the CPU), learned tensors in float32.

        Four tensors of samples x seq_len x hidden are alive at once: block 0's inputs (kept
        to restart both streams each pass), the two streams, and the window's targets (or,
        between windows, a stream's next states while it advances). Not counted: the
        loaded model itself (the dry run's weights) and the activations one batch keeps for
        the backward pass through a window (one batch, not the calibration set)."""
        stream = samples * seq_len * hidden * dtype_bytes
        learned = [
            0 if k == FULL_PRECISION else sum(self._learned(m) for _, m in block_linears(b))
            for b, k in zip(blocks, bits, strict=True)
        ]
        n = len(blocks)
        windows = parse_windows(self.windows, n) if self.windows else self._schedule(n)
        largest = max(sum(learned[j] for j in w) for w in windows)
        return {
            "inputs": stream,
            "streams": 2 * stream,
            "targets": stream,
            # every block's parameters; gradients and AdamW's two moments of the largest window
            "learned": FLOAT32 * (sum(learned) + 3 * largest),
            "weights": sum(_copies(b, k, dtype_bytes) for b, k in zip(blocks, bits, strict=True)),
        }

    def _learned(self, module: nn.Module) -> int:
        """Learned numbers of one linear: the rank update (A and B) and two clips a group."""
        linear = as_linear(self.name, module)
        groups = math.ceil(linear.in_features / (self.group_size or linear.in_features))
        out_features, in_features = linear.out_features, linear.in_features
        return self.rank * (in_features + out_features) + 2 * out_features * groups

    @staticmethod
    def _merge(block: nn.Module, bits: int) -> None:
        """Each learned linear becomes a plain one on its grid; the grid (scale and zero
        point per row and group) stays with it as buffers, for the GPTQ export."""
        for name, module in list(block.named_modules()):
            if isinstance(module, LearnedLinear):
                weight, scale, zero = module.learned.merged()
                linear = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None)
                linear.weight = nn.Parameter(weight.to(module.learned.dtype), requires_grad=False)
                if module.bias is not None:
                    linear.bias = nn.Parameter(module.bias, requires_grad=False)
                linear.register_buffer(SCALE_BUFFER, scale)
                linear.register_buffer(ZERO_BUFFER, zero)
                setattr(linear, BITS_ATTR, bits)
                block.set_submodule(name, linear)

    def state(self, block: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in block.state_dict().items()}

    def restore(self, original: nn.Module, bits: int, state: dict) -> nn.Module:
        for name, module in block_linears(original):
            if f"{name}.{SCALE_BUFFER}" in state:  # a quantized block: its grid comes along
                for buffer in (SCALE_BUFFER, ZERO_BUFFER):
                    module.register_buffer(buffer, torch.empty_like(state[f"{name}.{buffer}"]))
        original.load_state_dict(state, strict=True)
        for _, module in block_linears(original):
            setattr(module, BITS_ATTR, bits)
        return original

    def checkpoint_settings(self) -> dict:
        """What a GPTQ checkpoint of slider's blocks declares: asymmetric, no reordering,
        slider's groups (-1: one group a row, GPTQ's per-channel)."""
        return {"group_size": self.group_size or -1, "sym": False, "act_order": False}

    @torch.no_grad()
    def pack(self, block: nn.Module, bits: int) -> nn.Module:
        """`block`'s merged linears as gptqmodel's packed GPTQ linears holding the same codes,
        scales and zero points (lwq.export.gptq_checkpoint writes them); returns `block`.

        The codes are found again from the merged weights, round(W / scale + zero), which
        gives the merged codes exactly when the model's dtype holds W exactly (float32)."""
        from lwq.quant.gptq import _gptqmodel

        packed_type = _gptqmodel()[2]
        for name, module in block_linears(block):
            scale, zero = getattr(module, SCALE_BUFFER, None), getattr(module, ZERO_BUFFER, None)
            if scale is None:
                raise LwqError(
                    f"{name} holds no slider grid (a block cached before grids were kept); "
                    "delete results/cache/variants for this plan and calibrate it again"
                )
            linear = as_linear(self.name, module)
            packed = packed_type(
                bits=bits,
                group_size=self.group_size or -1,
                sym=False,
                desc_act=False,
                in_features=linear.in_features,
                out_features=linear.out_features,
                bias=linear.bias is not None,
                pack_dtype=torch.int32,
            )
            groups = torch.arange(linear.in_features, dtype=torch.int32)
            groups //= self.group_size or linear.in_features
            plain = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
            plain.weight.data = linear.weight.detach().float().cpu()
            if linear.bias is not None:
                plain.bias.data = linear.bias.detach().float().cpu()
            packed.pack(plain, scale.float().cpu(), zero.float().cpu(), groups)
            packed.post_init()
            block.set_submodule(name, packed.to(linear.weight.device).eval())
        return block

    def for_eval(self, block: nn.Module) -> nn.Module:
        return block

    def held_bytes(self, module: nn.Module) -> int:
        return self.weight_bytes(module, getattr(module, BITS_ATTR, FULL_PRECISION))

    def weight_bytes(self, module: nn.Module, bits: int) -> int:
        """Codes at `bits`, and per group a float16 scale and a `bits`-wide zero point: the
        grid rtn stores (its include_zero range), at this group size."""
        if bits == FULL_PRECISION:
            return full_precision_bytes(module)
        as_linear(self.name, module)  # anything else is refused, naming it
        return RTN(group_size=self.group_size).weight_bytes(module, bits)  # 0: per channel


def _copies(block: nn.Module, bits: int, dtype_bytes: int) -> int:
    """Bytes of the block's two copies during calibration: the full-precision reference in
    the model's dtype, and the working copy whose linears (if quantized) hold a float32
    copy of their weights (LearnedWeight.weight)."""
    params = sum(p.numel() for p in block.parameters())
    if bits == FULL_PRECISION:
        return 2 * params * dtype_bytes
    weights = sum(as_linear("slider", m).weight.numel() for _, m in block_linears(block))
    return params * dtype_bytes + weights * FLOAT32 + (params - weights) * dtype_bytes


def check_fits(needed: dict[str, int], available: int, where: str) -> None:
    """Refuse, before it starts, a calibration whose `needed` parts (calibration_bytes)
    exceed the `available` bytes of `where` (a device, the host)."""
    total = sum(needed.values())
    if total <= available:
        return
    parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in needed.items())
    raise LwqError(
        f"quant=slider needs {total / GIB:.1f} GiB on {where} ({parts} GiB) but "
        f"{available / GIB:.1f} GiB are free; lower calib.samples or calib.seq_len "
        "(inputs, streams and targets grow with both)"
    )


def _checkpoint(learned: list[list[LearnedWeight]]) -> dict[str, torch.Tensor]:
    """What a resumed calibration needs besides its position: every block's learned
    parameters and the CPU random state. No optimiser state: each window starts a fresh
    AdamW. (Nothing draws random numbers after the seeded Kaiming init today; the state is
    kept so a draw added to the loop, a shuffle say, stays resumable.)"""
    tensors = {
        f"{j}.{m}.{name}": getattr(w, name).detach().cpu().contiguous()
        for j, weights in enumerate(learned)
        for m, w in enumerate(weights)
        for name in PARAMETERS
    }
    tensors["rng"] = torch.get_rng_state()
    return tensors


def _restore(resume: Resume | None, learned: list[list[LearnedWeight]]) -> tuple[int, int]:
    """Load the last saved window's parameters into `learned`; (pass, windows done in it)."""
    saved = None if resume is None else resume.load()
    if saved is None:
        return 0, 0
    tensors, position = saved
    expected = set(_checkpoint(learned))
    if set(tensors) != expected:
        raise LwqError(
            f"{getattr(resume, 'path', 'the resume file')} does not fit this calibration's "
            "blocks; delete it to calibrate from the start"
        )
    with torch.no_grad():
        for j, weights in enumerate(learned):
            for m, w in enumerate(weights):
                for name in PARAMETERS:
                    getattr(w, name).copy_(tensors[f"{j}.{m}.{name}"])
    torch.set_rng_state(tensors["rng"])
    return int(position["pass"]), int(position["done"])


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
