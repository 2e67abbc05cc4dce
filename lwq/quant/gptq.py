"""GPTQ (Frantar et al. 2023) through gptqmodel: calibrated 2, 3, 4 or 8-bit weights.

GPTQ quantizes a linear layer column by column and pushes each column's rounding error
onto the columns not yet quantized, weighted by the inverse Hessian H = X^T X of the
layer's calibration inputs X. So unlike the other backends it quantizes whole blocks, one
group of linears at a time: with `true_sequential` (default, as the GPTQ reference code)
the linears that read the same input (q, k and v; gate and up) are quantized together,
and each later group's X is recorded with the groups before it already quantized, so
o_proj corrects the error of q, k and v, and down_proj that of everything before it;
without it one forward pass records every linear's X on the full-precision block. Each
linear is quantized by gptqmodel's `GPTQ` and packed into its `TorchLinear` (the GPTQ
checkpoint format: int32-packed codes, int32-packed zero points, float16 scales, an int32
group index per input feature). Which inputs enter a block (those of the full-precision
model, or those of the already-quantized blocks before it) is the engine's choice
(lwq.quant.engine), the only code that reads `inputs`.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence

import torch

from lwq.errors import LwqError
from lwq.modeling.blocks import block_linears, linear_shape
from lwq.modeling.capture import BlockInputs
from lwq.plan import entry_widths
from lwq.quant.base import (
    BACKENDS,
    BLOCK,
    FULL_PRECISION,
    ContractCase,
    as_linear,
    bias_bytes,
    dequantized,
    full_precision_bytes,
    installed_bytes,
)
from lwq.runtime import pick_device

INT32 = 4
FLOAT16 = 2
PACK_MULTIPLE = 32  # gptqmodel packs rows and columns in words of 32 codes
INPUT_MODES = ("full_precision", "sequential")


def _gptqmodel():
    """gptqmodel's GPTQ, its config and its torch module, imported on first use (slow)."""
    if (os.cpu_count() or 1) <= 2:  # its worker pools refuse to start on 2 cores otherwise
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    from gptqmodel.quantization.config import QuantizeConfig
    from gptqmodel.quantization.gptq import GPTQ

    return GPTQ, QuantizeConfig, TorchLinear


@BACKENDS.register("gptq")
class GPTQBackend:
    """gptqmodel's GPTQ, one block at a time; evaluated packed or on dequantized weights."""

    name = "gptq"
    supported_bits = frozenset({2, 3, 4, 8, FULL_PRECISION})
    unit = BLOCK  # quantized on the inputs entering each block (lwq.quant.engine)
    contract = ContractCase(lambda: torch.nn.Linear(200, 64), 4, "multiples of 32; proj has 200")

    def __init__(
        self,
        group_size: int = 128,
        sym: bool = False,
        act_order: bool = False,
        damp_percent: float = 0.01,
        inputs: str = "full_precision",
        eval_dequantized: bool | str = "auto",
        true_sequential: bool = True,
        mse: float = 0.0,
    ) -> None:
        if group_size < 0 or group_size % PACK_MULTIPLE:
            raise LwqError(
                "quant.settings.group_size must be 0 (per channel) or a multiple of 32, "
                f"got {group_size}"
            )
        if inputs not in INPUT_MODES:
            raise LwqError(
                f"quant.settings.inputs must be one of {', '.join(INPUT_MODES)}, got {inputs!r}"
            )
        if not 0 < damp_percent < 1:
            raise LwqError(f"quant.settings.damp_percent must be in (0, 1), got {damp_percent}")
        self.group_size = group_size
        self.sym = sym
        self.act_order = act_order
        self.damp_percent = damp_percent
        self.inputs = inputs
        self.true_sequential = bool(true_sequential)
        if not 0 <= mse <= 10:
            raise LwqError(f"quant.settings.mse must be 0 (off) or a norm such as 2.4, got {mse}")
        self.mse = float(mse)
        if eval_dequantized == "auto":  # the library's kernels on CUDA; dequantized on CPU
            eval_dequantized = pick_device("auto").type != "cuda"
        if not isinstance(eval_dequantized, bool):
            raise LwqError(
                "quant.settings.eval_dequantized must be auto, true or false, "
                f"got {eval_dequantized!r}"
            )
        self.eval_dequantized = eval_dequantized

    @property
    def library_group_size(self) -> int:
        """gptqmodel's (and a GPTQ checkpoint's) spelling: -1 for one group a row."""
        return self.group_size or -1

    def checkpoint_settings(self) -> dict:
        """What a GPTQ checkpoint of these blocks declares."""
        return {**self.settings(), "group_size": self.library_group_size}

    def settings(self) -> dict:
        return {
            "group_size": self.group_size,
            "sym": self.sym,
            "act_order": self.act_order,
            "damp_percent": self.damp_percent,
            "inputs": self.inputs,
            "eval_dequantized": self.eval_dequantized,
            "true_sequential": self.true_sequential,
            # off by default and then left out, so keys made before it existed stay valid
            **({"mse": self.mse} if self.mse else {}),
        }

    @torch.no_grad()
    def quantize(
        self, block: torch.nn.Module, bits, inputs: BlockInputs, built: Sequence[tuple] = ()
    ) -> torch.nn.Module:
        """`block` (mutated) with every linear replaced by its packed GPTQ `TorchLinear`.

        `bits` is one width, or one per linear in `block_linears` order (16: that linear is
        left as loaded). `inputs` are the hidden states entering this block; the block runs
        them once per group of linears (once in all without true_sequential), each forward
        only as far as the group's last linear. `built`: (bits, packed block) of this
        block built before on the same inputs; the leading groups one of them quantized
        at the same widths are taken from it (GPTQ would compute the same tensors).
        """
        if bits == FULL_PRECISION:
            return block
        linears = dict(block_linears(block))
        width = dict(zip(linears, entry_widths(bits, len(linears)), strict=True))
        for name, module in linears.items():
            self._check_shape(name, as_linear(self.name, module))
        order, once = _call_order(block, inputs, linears)
        groups = order if self.true_sequential else [[n for g in order for n in g]]
        if sorted(n for g in groups for n in g) != sorted(linears):  # never skip a linear
            raise LwqError(f"GPTQ found linears {groups} in a block holding {sorted(linears)}")
        done = _same_leading_groups(groups, width, built)
        groups = [[n for n in g if width[n] != FULL_PRECISION] for g in groups]
        packed = {}
        for group in filter(None, groups):
            if group[0] in done:  # the same inputs and widths up to here: the same result
                for name in group:
                    packed[name] = done[name].to(linears[name].weight.device)
                    if self.true_sequential:
                        block.set_submodule(name, self._runnable(packed[name], linears[name]))
                continue
            tasks = {name: self._task(linears[name], width[name]) for name in group}
            handles = [
                linears[name].register_forward_pre_hook(self._collector(tasks[name]))
                for name in group
            ]
            try:  # cut after the group; a linear called twice a forward needs every call
                inputs.feed(block, until=linears[group[-1]] if once else None)
            finally:
                for handle in handles:
                    handle.remove()
            for name, task in tasks.items():
                if not task.nsamples:  # gptqmodel would fall back to plain rounding silently
                    raise LwqError(f"{name} saw no calibration tokens; check calib.samples")
                packed[name] = self._pack(task, width[name])
                if self.true_sequential:  # the next groups see this linear quantized
                    block.set_submodule(name, self._runnable(packed[name], linears[name]))
        for name, module in packed.items():
            block.set_submodule(name, module)
        return block

    def _task(self, module: torch.nn.Module, bits: int):
        gptq, config, _ = _gptqmodel()
        task = gptq(as_linear(self.name, module), config(**self._config(bits)))
        task.quantizer.configure(perchannel=True)
        return task

    @staticmethod
    def _runnable(packed: torch.nn.Module, linear: torch.nn.Module) -> torch.nn.Module:
        """A quantized linear's dequantized weights as a plain linear: what the next groups'
        inputs are recorded through (gptqmodel's CPU kernels are slow at 2 and 3 bits)."""
        weight = packed.dequantize_weight().t()
        return dequantized(weight, linear.bias, 0, linear.weight.dtype)

    def for_eval(self, block: torch.nn.Module) -> torch.nn.Module:
        """`block` (mutated) as evaluated: packed, or on its dequantized weights."""
        if not self.eval_dequantized:
            return block
        _, _, packed_type = _gptqmodel()
        dtype = _dtype_of(block)
        for name, module in list(block.named_modules()):
            if isinstance(module, packed_type):
                weight = module.dequantize_weight().t()  # (in, out) -> (out, in)
                held = self.held_bytes(module)
                block.set_submodule(name, dequantized(weight, module.bias, held, dtype))
        return block

    def state(self, block: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The packed tensors of a built block, on the host."""
        return {k: v.detach().cpu().contiguous() for k, v in block.state_dict().items()}

    def restore(
        self, original: torch.nn.Module, bits: int, state: dict[str, torch.Tensor]
    ) -> torch.nn.Module:
        """A built block again: `original` (a copy, mutated) with empty packed linears of
        `bits`, filled from `state`."""
        _, _, packed_type = _gptqmodel()
        for name, module in block_linears(original):
            linear = as_linear(self.name, module)
            original.set_submodule(name, self._empty(packed_type, linear, bits))
        original.load_state_dict(state, strict=True)
        for module in original.modules():
            if isinstance(module, packed_type):
                self._post_init(module)
        return original.eval()

    def _post_init(self, packed: torch.nn.Module) -> None:
        """gptqmodel's `post_init`, without its torch.compile of `dequantize_weight` when
        lwq dequantizes each module once (`_runnable`, `for_eval`): every new module
        recompiles it (its guards hold the module's buffers), ~8 s at a process's first
        block and up to 1 s a block after; its kernels on the packed weights keep it."""
        if self.eval_dequantized:
            packed.optimized = True  # what `optimize()` checks before compiling
        packed.post_init()

    def _empty(self, packed_type, linear: torch.nn.Linear, bits: int) -> torch.nn.Module:
        return packed_type(
            bits=bits,
            group_size=self.library_group_size,
            sym=self.sym,
            desc_act=self.act_order,
            in_features=linear.in_features,
            out_features=linear.out_features,
            bias=linear.bias is not None,
            pack_dtype=torch.int32,
        )

    def held_bytes(self, module: torch.nn.Module) -> int:
        return installed_bytes(module, _gptqmodel()[2], _packed_bytes)

    def weight_bytes(self, module: torch.nn.Module, bits: int) -> int:
        if bits == FULL_PRECISION:
            return full_precision_bytes(module)
        out_features, in_features = linear_shape(module)
        groups = math.ceil(in_features / (self.group_size or in_features))
        codes = in_features * out_features * bits // 8
        zeros = groups * math.ceil(out_features * bits / PACK_MULTIPLE) * INT32
        scales = groups * out_features * FLOAT16
        return codes + zeros + scales + in_features * INT32 + bias_bytes(module)

    def _config(self, bits: int) -> dict:
        return {
            "bits": bits,
            "group_size": self.library_group_size,
            "sym": self.sym,
            "desc_act": self.act_order,
            "damp_percent": self.damp_percent,
            "mse": self.mse,
            "offload_to_disk": False,
            # gptqmodel's group-aware reordering (on by default) needs groups; one group a
            # row is the plain GPTQ column order
            **({} if self.group_size else {"act_group_aware": False}),
        }

    def _check_shape(self, name: str, linear: torch.nn.Linear) -> None:
        for what, size in (("input", linear.in_features), ("output", linear.out_features)):
            if size % PACK_MULTIPLE:
                raise LwqError(
                    f"quant=gptq packs {what} sizes that are multiples of 32; {name} has "
                    f"{size}; use quant=rtn or quant=hqq for this model"
                )

    @staticmethod
    def _collector(task):
        def hook(module, args):
            task.add_batch(args[0], None)

        return hook

    def _pack(self, task, bits: int) -> torch.nn.Module:
        _, _, packed_type = _gptqmodel()
        linear = task.module
        weights, scale, zero, g_idx, *_ = task.quantize()
        packed = self._empty(packed_type, linear, bits)
        linear.weight.data = weights.to(linear.weight.dtype)
        packed.pack(linear, scale, zero, g_idx)
        self._post_init(packed)
        return packed.to(linear.weight.device).eval()


def _same_leading_groups(groups: list[list[str]], width: dict, built: Sequence[tuple]) -> dict:
    """Copies of the packed linears of the most leading `groups` that one of the `built`
    blocks quantized at exactly `width` (every linear of those groups, those left at 16
    too: they shape the next groups' inputs), by name."""
    best, taken = 0, {}
    for bits, block in built:
        theirs = dict(zip(width, entry_widths(bits, len(width)), strict=True))
        same = 0
        while same < len(groups) and all(theirs[n] == width[n] for n in groups[same]):
            same += 1
        if same > best:
            names = [n for g in groups[:same] for n in g if width[n] != FULL_PRECISION]
            best, taken = same, {n: block.get_submodule(n) for n in names}
    return {n: copy.deepcopy(m) for n, m in taken.items()}


def _call_order(block, inputs: BlockInputs, linears: dict) -> tuple[list[list[str]], bool]:
    """The block's linears in the order they run, those reading the same input tensor
    (q, k and v; gate and up) in one group, and whether each runs exactly once a forward;
    found by running the first calibration batch once, so any family's naming works."""
    seen: list[tuple[str, torch.Tensor]] = []  # the tensors are held, so ids are not reused

    def recorder(name):
        def hook(module, args):
            seen.append((name, args[0]))

        return hook

    handles = [module.register_forward_pre_hook(recorder(n)) for n, module in linears.items()]
    try:
        block(inputs.hidden[0], **inputs.kwargs[inputs.index][0])
    finally:
        for handle in handles:
            handle.remove()
    groups: list[list[str]] = []
    for k, (name, tensor) in enumerate(seen):
        if any(name in g for g in groups):
            continue  # a linear called twice keeps its first place
        if k and tensor is seen[k - 1][1] and groups:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups, sorted(name for name, _ in seen) == sorted(linears)


def _packed_bytes(module: torch.nn.Module) -> int:
    """The GPTQ-format tensors a `TorchLinear` holds (not its kernel's lookup constants)."""
    held = (module.qweight, module.qzeros, module.scales, module.g_idx, module.bias)
    return sum(t.nbytes for t in held if t is not None)


def _dtype_of(block: torch.nn.Module) -> torch.dtype:
    for p in block.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
