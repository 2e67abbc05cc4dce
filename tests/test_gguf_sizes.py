"""The bytes a GGUF file will hold, from shapes alone (lwq.export.gguf_sizes): llama.cpp's
fallbacks on rows that are not a multiple of a type's block, biases and norms at F32,
embeddings at their type. The file itself is compared in tests/test_export_gguf.py."""

from __future__ import annotations

import pytest
import torch

from lwq.errors import LwqError
from lwq.export.gguf_sizes import GgufFileSizes, stored_type
from lwq.quant.gguf_types import DEFAULT_TYPES


@pytest.mark.parametrize(
    ("wanted", "width", "stored"),
    [
        ("q2_k", 1536, "q2_k"),  # 6 x 256: the K-quant fits
        ("q2_k", 576, "q4_0"),  # SmolLM2's hidden width: 2.25 x 256
        ("q3_k", 576, "q4_0"),
        ("q4_k", 576, "q5_0"),
        ("q5_k", 576, "q5_1"),
        ("q6_k", 576, "q8_0"),
        ("q4_k", 100, "f16"),  # not even a multiple of 32
        ("q8_0", 100, "f16"),  # a 32-wide type with nothing smaller to go to
        ("q4_0", 64, "q4_0"),
        ("f16", 100, "f16"),
    ],
)
def test_the_stored_type_follows_llama_cpps_fallbacks(wanted, width, stored):
    assert stored_type(wanted, width) == stored


def test_a_linears_bytes_are_its_stored_types_blocks_and_its_bias_is_not_among_them():
    sizes = GgufFileSizes(DEFAULT_TYPES, "f16")
    with torch.device("meta"):
        q_proj = torch.nn.Linear(576, 576, bias=True)
        down = torch.nn.Linear(1536, 576, bias=False)
        odd = torch.nn.Linear(100, 8, bias=False)
    assert sizes.weight_bytes(q_proj, 2) == 576 * 576 // 32 * 18  # q4_0: 18 bytes / 32
    assert sizes.weight_bytes(down, 2) == 576 * 1536 // 256 * 84  # q2_k: 84 bytes / 256
    assert sizes.weight_bytes(down, 4) == 576 * 1536 // 256 * 144  # q4_k
    assert sizes.weight_bytes(odd, 4) == 8 * 100 * 2  # F16
    assert sizes.weight_bytes(q_proj, 16) == 576 * 576 * 2
    with pytest.raises(LwqError, match="export.types.7"):
        sizes.weight_bytes(q_proj, 7)


def test_tensors_no_plan_changes_are_counted_as_the_file_stores_them():
    shapes = ((49152, 576), (576,), (64,))  # embedding, a norm, a bias
    assert GgufFileSizes(DEFAULT_TYPES, "f16").fixed_bytes(shapes) == 49152 * 576 * 2 + 4 * 640
    q8 = GgufFileSizes(DEFAULT_TYPES, "q8_0").fixed_bytes(shapes)
    assert q8 == 49152 * 576 // 32 * 34 + 4 * 640
