"""lwq: variable layer-wise quantization harness."""

import logging

__version__ = "0.1.0"

# torchao (pulled in by gptqmodel, imported by transformers when present) warns on every
# import about CUDA kernels a CPU build cannot load, and torch warns about its enums.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)
