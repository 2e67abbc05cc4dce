"""A random model with a 262 k vocabulary (Gemma-3's size), for the memory benchmark.

`python tools/wide_vocab_model.py` writes models/wide-vocab-262k: SmolLM2-135M's shape
(576 wide, GQA 9/3, tied embeddings) cut to 4 blocks, with 262,144 token embeddings and
random weights, and SmolLM2's tokenizer (whose ids all fall inside the wider vocabulary).
Its numbers mean nothing; its logits are as wide as a real 262 k model's, which is what
`python -m bench --section memory` measures on it. Needs `make smollm2` first.
"""

from __future__ import annotations

import shutil
import sys

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lwq.runtime import PROJECT_ROOT

SOURCE = PROJECT_ROOT / "models" / "smollm2-135m"
OUT = PROJECT_ROOT / "models" / "wide-vocab-262k"
VOCAB = 262_144
BLOCKS = 4


def main() -> int:
    if (OUT / "model.safetensors").exists():
        return 0
    if not (SOURCE / "config.json").exists():
        sys.exit(f"{SOURCE} is missing; run `make smollm2` first")
    config = LlamaConfig.from_pretrained(SOURCE)
    config.vocab_size, config.num_hidden_layers = VOCAB, BLOCKS
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(OUT)
    AutoTokenizer.from_pretrained(SOURCE).save_pretrained(OUT)
    shutil.copy(SOURCE / "config.json", OUT / "source-config.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
