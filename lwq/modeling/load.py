"""Load a causal LM and its tokenizer from a hub id or a local directory, and read a
checkpoint's own config (its context and number of blocks) before any weights load."""

from __future__ import annotations

import ctypes
import functools
import itertools
import mmap
import os
import re
from dataclasses import dataclass

import torch
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lwq.errors import LwqError

MADV_DONTNEED = 4  # Linux

# A hub id is `owner/name` (letters, digits, `-`, `_`, `.`); anything else is a local path.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class ModelNotFoundError(LwqError, FileNotFoundError):
    """The model is neither a local directory nor reachable (or cached) on the hub."""


def _looks_like_hub_id(name_or_path: str) -> bool:
    """True for `owner/name` strings such as `meta-llama/Llama-2-7b-hf`."""
    return HUB_ID.fullmatch(name_or_path) is not None


def _is_offline_error(err: BaseException) -> bool:
    """True if `err` (or an exception it was raised from) means the hub could not be reached."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return True
        if "couldn't connect to" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def load_model(
    name_or_path: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    trust_remote_code: bool = False,
    revision: str | None = None,
    allow_pickle: bool = False,
    gguf_file: str | None = None,
    make: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a hub id or a local directory.

    Returns `(model, tokenizer)`: the model in eval mode on `device` with weights in `dtype`;
    the tokenizer with `pad_token` set to `eos_token` when it had none (left unset if it has
    neither). `trust_remote_code` is passed through as given. Weights are read from
    safetensors files only (loading a pickle can run code) unless `allow_pickle`. Raises
    ModelNotFoundError (a FileNotFoundError) for a local path that does not exist and for a
    hub id that is neither cached nor reachable. `gguf_file` names a GGUF file in the
    directory (or hub repo) to load instead, dequantized to `dtype` through the `gguf`
    package. `make` is the command that builds a missing local checkpoint.
    """
    path = os.path.expanduser(name_or_path)
    _check_exists(path, make)
    options = {"revision": revision, "trust_remote_code": trust_remote_code}
    weights = {"use_safetensors": not allow_pickle}
    if gguf_file:
        options["gguf_file"] = gguf_file
        weights = {}  # a GGUF file is data only (no pickle), whatever allow_pickle says
    try:
        # Tokenizer first: it is small, so an uncached model fails before any weights load.
        tokenizer = AutoTokenizer.from_pretrained(path, **options)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, device_map=device, **weights, **options
        )
    except OSError as err:
        if not allow_pickle and "safetensors" in str(err):
            raise ModelNotFoundError(
                f"model {path!r} has no safetensors weights; convert them to safetensors, or "
                "set model.allow_pickle=true to load its pickle (.bin) files (they can run code)"
            ) from err
        if not _is_offline_error(err):
            raise
        raise _not_cached(path) from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    own_memory(model)
    return model.eval(), tokenizer


@dataclass(frozen=True)
class CheckpointFacts:
    """What a checkpoint's config.json says, read without loading any weight."""

    blocks: int | None  # num_hidden_layers (of the text model for composite configs)
    context: int | None  # max_position_embeddings: the longest window the model was built for


def read_checkpoint_facts(
    name_or_path: str,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
    gguf_file: str | None = None,
    make: str | None = None,
) -> CheckpointFacts:
    """The number of blocks and the context of a checkpoint, from its config alone (for a
    GGUF file, from its metadata: no tensor is read)."""
    path = os.path.expanduser(name_or_path)
    _check_exists(path, make)
    if gguf_file and not _looks_like_hub_id(path) and not os.path.isfile(f"{path}/{gguf_file}"):
        raise ModelNotFoundError(
            f"model.gguf_file={gguf_file} is not in {path}; name a .gguf file in model.path"
        )
    gguf = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        config = AutoConfig.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code, **gguf
        )
    except OSError as err:
        if not _is_offline_error(err):
            raise
        raise _not_cached(path) from err
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    blocks = getattr(config, "num_hidden_layers", None)
    context = getattr(config, "max_position_embeddings", None)
    return CheckpointFacts(
        blocks if isinstance(blocks, int) else None, context if isinstance(context, int) else None
    )


def _check_exists(path: str, make: str | None = None) -> None:
    if os.path.exists(path):
        return
    if make:
        raise ModelNotFoundError(f"model path {path!r} does not exist yet; build it with `{make}`")
    if not _looks_like_hub_id(path):
        raise ModelNotFoundError(
            f"model path {path!r} does not exist and is not a hub id (owner/name); "
            "set model.path to a local checkpoint directory or a hub id"
        )


def _not_cached(path: str) -> ModelNotFoundError:
    """The one-line error for a hub model that is not cached and cannot be fetched."""
    return ModelNotFoundError(
        f"model {path!r} is not in the local cache and the hub cannot be reached; "
        "download it on a machine with internet or point model.path at a local directory"
    )


def checkpoint_config(
    name_or_path: str,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
    gguf_file: str | None = None,
):
    """The checkpoint's config from disk: a local directory's config.json or a hub id's in
    the local Hugging Face cache (never the network); None if neither is there."""
    path = os.path.expanduser(name_or_path)
    if not os.path.exists(path) and not _looks_like_hub_id(path):
        return None
    try:
        gguf = {"gguf_file": gguf_file} if gguf_file else {}
        return AutoConfig.from_pretrained(
            path,
            revision=revision,
            trust_remote_code=trust_remote_code,
            local_files_only=True,
            **gguf,
        )
    except (OSError, ValueError):
        return None


def config_from_shape(shape):
    """A transformers config with a conf/model shape (a ModelShape): the model's own family
    when transformers knows it, else the family of the same layout it is shrunk as."""
    sizes = {
        "num_hidden_layers": shape.blocks,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": shape.context,
        "tie_word_embeddings": shape.tie_word_embeddings,
    }
    try:
        return AutoConfig.for_model(shape.model_type, **sizes)
    except ValueError:  # e.g. qwen: its modelling code ships with the checkpoint
        return AutoConfig.for_model(shape.shrink_as, **sizes)


def meta_model(config) -> PreTrainedModel:
    """The model with every tensor on the meta device: shapes only, no memory, no weights."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def own_memory(model: torch.nn.Module) -> int:
    """Copy the host tensors a checkpoint's memory map backs into the process's own memory.

    While any tensor of a mapped safetensors file lives, every page of the file the process
    touched stays resident, so a block whose original is parked (lwq.quant.originals) would
    free nothing. Each tensor is copied, then its mapped pages are given back (madvise
    DONTNEED: they were read from the file and never written, so nothing is lost), so the
    copy never holds the model twice. Returns the number of tensors copied."""
    spans = _file_mappings()
    moved = 0
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.device.type == "cpu" and t.numel() and any(a <= t.data_ptr() < b for a, b in spans):
            t.data = _copied(t.detach())
            moved += 1
    return moved


def _copied(mapped: torch.Tensor, piece_bytes: int = 64 << 20) -> torch.Tensor:
    """A copy of a contiguous mapped tensor, made `piece_bytes` at a time, each piece's
    pages given back once copied: the copy never holds a large embedding twice."""
    if not mapped.is_contiguous():
        return mapped.clone()
    flat, copy = mapped.view(-1), torch.empty_like(mapped)
    out = copy.view(-1)
    step = max(1, piece_bytes // mapped.element_size())
    for start in range(0, flat.numel(), step):
        piece = flat[start : start + step]
        out[start : start + step] = piece
        _give_back(piece.data_ptr(), piece.numel() * piece.element_size())
    return copy


def _file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process mapped from files (Linux); none elsewhere."""
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return []
    spans = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[5].startswith("/"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            spans.append((start, end))
    return spans


def _give_back(address: int, size: int) -> None:
    """Drop the whole pages of [address, address + size) from this process's memory."""
    page = mmap.PAGESIZE
    start = -(-address // page) * page
    end = (address + size) // page * page
    if end > start:
        _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)
