"""GGUF checkpoints as a model source: what a GGUF file holds (its tensor types), and its
conversion, once, into a safetensors checkpoint directory that loads like any other.

transformers reads GGUF through the `gguf` package and dequantizes every tensor to the
compute dtype, so the weights lwq measures are the GGUF's own values; only the file
format changes. The converted directory keeps `gguf_source.json` (the file's name, sha256
and tensor types), so every record made from it can say where its weights came from.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lwq.errors import LwqError
from lwq.provenance import file_sha256

SOURCE_FILE = "gguf_source.json"  # written next to the converted weights


def tensor_types(gguf_path: Path) -> dict[str, int]:
    """How many tensors of each GGUF type the file holds, e.g. {"Q4_1": 210, "F32": 61}."""
    from gguf import GGUFReader  # the reader maps the file; import only when used

    reader = GGUFReader(str(gguf_path))
    counts = collections.Counter(t.tensor_type.name for t in reader.tensors)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def describe(gguf_path: Path, *, with_sha256: bool = True) -> dict:
    """What a record says of GGUF source weights: the file, its tensor types and (unless
    the caller hashes weight files already) its sha256."""
    gguf_path = Path(gguf_path)
    digest = {"sha256": file_sha256(gguf_path)} if with_sha256 else {}
    return {"format": "gguf", "file": gguf_path.name, **digest} | {
        "tensor_types": tensor_types(gguf_path)
    }


def read_source(model_dir: Path) -> dict | None:
    """The GGUF a converted checkpoint came from (None for a checkpoint that was not)."""
    path = Path(model_dir) / SOURCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def convert(gguf_path: Path, out_dir: Path, *, expected_sha256: str | None = None) -> dict:
    """Write `gguf_path` as a float32 safetensors checkpoint (config, tokenizer, weights)
    into `out_dir`; returns the source description also written to gguf_source.json.

    Refuses a file whose sha256 is not `expected_sha256` (when given): a different file
    would silently change every number measured on the model."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    source = describe(gguf_path)
    if expected_sha256 is not None and source["sha256"] != expected_sha256:
        raise LwqError(
            f"{gguf_path} has sha256 {source['sha256']}, not the expected {expected_sha256}; "
            "delete it and fetch it again"
        )
    where, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    # The loaded model carries a GGUF "quantization" marker that save_pretrained refuses;
    # the tensors are plain float32 by now, so they go into a model built from a clean config.
    config = AutoConfig.from_pretrained(where, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise LwqError(f"GGUF conversion of {name} lost tensors: {missing} / {unexpected}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    return source
