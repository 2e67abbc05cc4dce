"""ref-tiny, every block at 2 (then 3) bits, group 128: held-out token perplexity of rtn,
gptq (damp 0.1, mse 2.4: the tuned settings) and slider (sliding windows, and block by
block), all calibrated on one calibration set, with each calibration's seconds.

Usage: python experiments/slider_ref_tiny.py SAMPLES SEQ_LEN EPOCHS (docs/backends.md:
16 128 20).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from lwq.data import chunk_documents, load_texts, seeded_subset  # noqa: E402
from lwq.evaluation.perplexity import perplexity  # noqa: E402
from lwq.modeling.blocks import find_blocks  # noqa: E402
from lwq.modeling.capture import BlockInputs  # noqa: E402
from lwq.plan import Plan  # noqa: E402
from lwq.quant import make_backend  # noqa: E402
from lwq.quant.engine import Engine  # noqa: E402
from lwq.quant.install import PlanApplier  # noqa: E402
from tests.conftest import REF_MODEL, ROOT, reference_calibration  # noqa: E402


def main(samples: int, seq_len: int, epochs: int) -> None:
    model = AutoModelForCausalLM.from_pretrained(REF_MODEL, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(REF_MODEL)
    blocks = find_blocks(model)
    ids = reference_calibration(tokenizer, samples=samples, seq_len=seq_len)
    pieces = chunk_documents(load_texts("ref-heldout", ROOT), 4000)
    texts = seeded_subset(pieces, 16, seed=0)

    def ppl() -> float:
        return perplexity(model, tokenizer, texts, max_length=256).token_perplexity

    print("unquantized", round(ppl(), 3), flush=True)
    slider = {"group_size": 128, "epochs": epochs}
    backends = {
        "rtn": make_backend("rtn", group_size=128),
        "gptq": make_backend("gptq", group_size=128, damp_percent=0.1, mse=2.4),
        "slider": make_backend("slider", **slider),
        "slider-blockwise": make_backend("slider", **slider, window=1, stride=1, fill=1),
    }
    for bits in (2, 3):
        for name, backend in backends.items():
            engine = Engine(backend, lambda: BlockInputs.capture(model, blocks, ids))
            applier = PlanApplier(blocks, engine)
            started = time.time()
            applier.apply(Plan((bits,) * len(blocks)))
            seconds = time.time() - started
            print(bits, name, round(ppl(), 3), f"{seconds:.1f} s", flush=True)
            applier.restore()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
