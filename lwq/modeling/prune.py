"""The pruning baseline: remove the k least important blocks instead of quantizing them.

Removal happens in place on the decoder ModuleList and is undone exactly. Whatever the
architecture keeps per block index is fixed up while blocks are out: each attention's
`layer_idx` (the KV-cache slot), `config.num_hidden_layers` and per-layer config lists
such as `layer_types`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from lwq.errors import LwqError

_PER_LAYER_CONFIG_LISTS = ("layer_types",)


def _set_layer_indices(blocks: torch.nn.ModuleList) -> None:
    for index, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index


@contextmanager
def blocks_removed(model, blocks: torch.nn.ModuleList, removed: list[int]):
    """Within the block, `blocks` holds only the kept blocks (in order); then all return."""
    n = len(blocks)
    if any(not 0 <= i < n for i in removed) or len(set(removed)) != len(removed):
        raise LwqError(f"blocks to remove {removed} must be distinct indices in 0..{n - 1}")
    if len(removed) == n:
        raise LwqError("cannot remove every block; the pruning sweep stops at L - 1 blocks")
    original = list(blocks)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    config = config or model.config
    saved = {key: getattr(config, key) for key in _PER_LAYER_CONFIG_LISTS if hasattr(config, key)}
    saved["num_hidden_layers"] = config.num_hidden_layers
    keep = [i for i in range(n) if i not in set(removed)]
    try:
        del blocks[:]
        blocks.extend(original[i] for i in keep)
        _set_layer_indices(blocks)
        config.num_hidden_layers = len(keep)
        for key in _PER_LAYER_CONFIG_LISTS:
            if isinstance(saved.get(key), list):
                setattr(config, key, [saved[key][i] for i in keep])
        yield blocks
    finally:
        del blocks[:]
        blocks.extend(original)
        _set_layer_indices(blocks)
        for key, value in saved.items():
            setattr(config, key, value)
