"""Find, generically, the parts layer-wise quantization works on.

A model is a stack of decoder blocks; each block holds weight layers (`nn.Linear`, or
transformers' `Conv1D` in GPT-2, whose weight is stored transposed). Nothing here is written
per model family: the blocks are the one `nn.ModuleList` whose length is the config's number
of hidden layers, and a block's weight layers are found by type. Anything unexpected raises
`UnsupportedModelError` rather than being skipped, since a skipped layer would make the
reported average bits wrong.
"""

from __future__ import annotations

from torch import nn
from transformers.pytorch_utils import Conv1D

from lwq.errors import LwqError

WEIGHT_LAYERS = (nn.Linear, Conv1D)


class UnsupportedModelError(LwqError, ValueError):
    """The model's layout is not one lwq can quantize block by block."""


def _num_layers(model: nn.Module) -> int:
    """The config's number of decoder blocks (the text part's for composite configs)."""
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no config; pass a transformers model"
        )
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    count = getattr(config, "num_hidden_layers", None)
    if not isinstance(count, int):
        raise UnsupportedModelError(
            f"{type(model).__name__}'s config has no integer num_hidden_layers to find blocks by"
        )
    return count


def _is_block_like(module: nn.Module) -> bool:
    """A container that holds weight layers, as opposed to a weight layer itself."""
    if isinstance(module, WEIGHT_LAYERS):
        return False
    return any(isinstance(m, WEIGHT_LAYERS) for m in module.modules())


def _describe(name: str, modules: nn.ModuleList) -> str:
    classes = ", ".join(sorted({type(m).__name__ for m in modules})) or "empty"
    return f"{name or '<root>'} ({len(modules)} x {classes})"


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order.

    The one `nn.ModuleList` whose length equals `config.num_hidden_layers` and whose children
    are all of one class that contains weight layers. Raises UnsupportedModelError naming
    the ModuleLists found if none or several match.
    """
    count = _num_layers(model)
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    matches = [
        (name, modules)
        for name, modules in lists
        if len(modules) == count
        and len({type(m) for m in modules}) == 1
        and _is_block_like(modules[0])
    ]
    if len(matches) == 1:
        return matches[0][1]
    name = type(model).__name__
    if matches:
        candidates = "; ".join(_describe(n, m) for n, m in matches)
        raise UnsupportedModelError(
            f"{name}: {len(matches)} nn.ModuleLists could be its {count} decoder blocks: "
            f"{candidates}; remove the extra one or extend lwq.modeling.blocks.find_blocks"
        )
    found = "; ".join(_describe(n, m) for n, m in lists) or "none"
    raise UnsupportedModelError(
        f"{name}: no nn.ModuleList of {count} same-class blocks with linear layers "
        f"(config.num_hidden_layers = {count}); ModuleLists found: {found}"
    )


def block_linears(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """The weight layers of one block, `(name relative to the block, module)` in module order.

    `nn.Linear` (and subclasses) and transformers' `Conv1D`. 1-D parameters (norm scales,
    biases) are ignored; any other module with a parameter of 2 or more dimensions raises
    UnsupportedModelError, as does a block with no weight layers.
    """
    linears = []
    for name, module in block.named_modules():
        if any(name.startswith(f"{inner}.") for inner, _ in linears):
            continue  # inside a weight layer (e.g. a wrapper's parts): the layer counts once
        if isinstance(module, WEIGHT_LAYERS):
            linears.append((name, module))
            continue
        for param_name, param in module.named_parameters(recurse=False):
            if param.dim() >= 2:
                where = f"{name}.{param_name}" if name else param_name
                raise UnsupportedModelError(
                    f"{type(block).__name__} has a {tuple(param.shape)} weight {where!r} in a "
                    f"{type(module).__name__}, which is neither nn.Linear nor Conv1D; "
                    "teach lwq.modeling.blocks.block_linears about it"
                )
    if not linears:
        raise UnsupportedModelError(
            f"{type(block).__name__} has no nn.Linear or Conv1D layers to quantize"
        )
    return linears


def input_dim(module: nn.Module) -> int:
    """The weight dimension holding input features: 1 for nn.Linear (out, in), 0 for Conv1D."""
    if isinstance(module, Conv1D):
        return 0
    if isinstance(module, nn.Linear):
        return 1
    raise UnsupportedModelError(f"{type(module).__name__} is neither nn.Linear nor Conv1D")


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of an nn.Linear or a Conv1D (stored transposed)."""
    rows, cols = module.weight.shape
    return (cols, rows) if input_dim(module) == 0 else (rows, cols)


def count_parameters(module: nn.Module) -> int:
    """The number of parameter elements in `module`, shared (tied) tensors counted once."""
    return sum(p.numel() for p in module.parameters())
