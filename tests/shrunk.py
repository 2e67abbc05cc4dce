"""Tiny random causal LMs of real transformers families, for CPU tests.

`shrunk_model("llama")` builds a 4-block, 64-wide Llama with random weights in a fraction of a
second; `shrunk_from_conf("conf/model/mistral-7b.yaml")` builds the shrunk copy of a paper
model, keeping what the harness depends on (family, GQA ratio, biases) and dropping the size.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

VOCAB_SIZE = 256
MAX_POSITIONS = 256
HEAD_DIM = 16

# Families whose attention takes fewer key/value heads than query heads (GQA).
GQA_FAMILIES = {"llama", "mistral", "qwen2", "gemma", "phi", "phi3"}


def _round64(x: float) -> int:
    """The nearest positive multiple of 64 (kernels and group sizes like round widths)."""
    return max(64, 64 * round(x / 64))


# The config key of the MLP width where it is not `intermediate_size`. The other sizes go by
# their llama names everywhere (gpt2 maps them through its config's attribute_map).
MLP_WIDTH_KEY = {"gpt2": "n_inner", "opt": "ffn_dim", "falcon": "ffn_hidden_size"}
FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "gemma",
    "phi",
    "phi3",
    "gpt2",
    "opt",
    "gpt_neox",
    "falcon",
)


def _family_kwargs(
    model_type: str, *, blocks: int, hidden: int, heads: int, kv_heads: int, intermediate: int
) -> dict:
    """Config keyword arguments of one family for the given sizes."""
    if model_type not in FAMILIES:
        known = ", ".join(FAMILIES)
        raise ValueError(f"no shrunk recipe for model_type {model_type!r}; known: {known}")
    kwargs = {
        "num_hidden_layers": blocks,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "max_position_embeddings": MAX_POSITIONS,
        MLP_WIDTH_KEY.get(model_type, "intermediate_size"): intermediate,
    }
    if model_type in GQA_FAMILIES:
        kwargs["num_key_value_heads"] = kv_heads
    if model_type == "gemma":  # Gemma's head_dim defaults to 256, not hidden / heads
        kwargs["head_dim"] = hidden // heads
    if model_type == "opt":  # OPT projects embeddings unless this equals hidden_size
        kwargs["word_embed_proj_dim"] = hidden
    # falcon keeps its falcon-7b layout (the family default): parallel attention, one kv head
    return kwargs


def _token_ids_in_vocab(model_type: str, vocab_size: int) -> dict:
    """Family default bos/eos/pad ids that fall outside the tiny vocab, moved to its last id."""
    defaults = AutoConfig.for_model(model_type)
    ids = {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(defaults, key, None)
        if isinstance(value, int) and value >= vocab_size:
            ids[key] = vocab_size - 1
    return ids


def shrunk_model(
    model_type: str, *, blocks: int = 4, hidden_size: int = 64, seed: int = 0, **overrides
) -> PreTrainedModel:
    """A randomly initialised tiny causal LM of the `model_type` family, float32, eval mode.

    Sizes: `hidden_size // 16` heads (head_dim 16), half as many key/value heads where the
    family has GQA, an MLP width of 2 * hidden rounded to a multiple of 64, a 256-token vocab
    and 256 positions; weight tying is the family default. `overrides` are config keyword
    arguments applied last (`num_attention_heads`, `num_key_value_heads` and
    `intermediate_size` are understood for every family). The same seed gives the same
    weights; the global torch RNG is left untouched.
    """
    heads = overrides.pop("num_attention_heads", max(1, hidden_size // HEAD_DIM))
    default_kv = max(1, heads // 2) if model_type in GQA_FAMILIES else heads
    kv_heads = overrides.pop("num_key_value_heads", default_kv)
    intermediate = overrides.pop("intermediate_size", _round64(2 * hidden_size))
    if kv_heads != heads and model_type not in GQA_FAMILIES:
        raise ValueError(f"{model_type} has no grouped-query attention; drop num_key_value_heads")
    kwargs = _family_kwargs(
        model_type,
        blocks=blocks,
        hidden=hidden_size,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
    )
    kwargs = {"vocab_size": VOCAB_SIZE, **_token_ids_in_vocab(model_type, VOCAB_SIZE), **kwargs}
    config = AutoConfig.for_model(model_type, **{**kwargs, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def shrunk_from_conf(conf_path: str | Path, *, seed: int = 0, **overrides) -> PreTrainedModel:
    """The 4-block shrunk copy of the model described by one `conf/model/*.yaml` file.

    Built as the conf's `shrink_as` family with head_dim 16, the conf's query/key-value head
    ratio (at least 2 kv heads where GQA) and its MLP/hidden width ratio (rounded to 64).
    `overrides` go to the config as in `shrunk_model` (e.g. a `vocab_size` for a tokenizer).
    """
    conf = yaml.safe_load(Path(conf_path).read_text())
    family = conf["shrink_as"]
    ratio = conf["num_attention_heads"] // conf["num_key_value_heads"]
    kv_heads = 2 if ratio > 1 else 4
    heads = kv_heads * ratio
    hidden = heads * HEAD_DIM
    mlp_ratio = conf["intermediate_size"] / conf["hidden_size"]
    return shrunk_model(
        family,
        blocks=4,
        hidden_size=hidden,
        seed=seed,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=_round64(mlp_ratio * hidden),
        **overrides,
    )
