"""The bench's accounting of a sweep against the machine: forward FLOPs counted from the
model's own modules, matmul throughput on its shapes, stages that add up to the sweep, the
deepened copies it times, and peak memory read from fresh processes."""

from __future__ import annotations

import pytest
import torch

from bench.roofline import bench_roofline, forward_flops_per_token, matmul_limit
from bench.stages import bench_memory, deepened_copy, merge_stages, sweep_stages
from lwq.commands.context import load
from lwq.config import compose_run
from tests.conftest import REF_MODEL, small_run_overrides
from tests.shrunk import shrunk_model


def test_forward_flops_count_every_linear_and_the_causal_attention():
    model = shrunk_model("llama")  # GQA: k/v narrower than q
    config = model.config
    d, inner, blocks = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    per_block = d * d * 2 + d * kv * 2 + 3 * d * inner  # q, o; k, v; gate, up, down
    linear = 2 * (blocks * per_block + d * config.vocab_size)  # + lm_head
    flops = forward_flops_per_token(model, window=9)
    assert flops["linear"] == linear
    assert flops["attention"] == blocks * 4 * 5 * d  # mean causal context of 9 tokens: 5
    assert flops["total"] == linear + flops["attention"]


def test_matmul_limit_times_each_distinct_shape_of_the_model():
    model = shrunk_model("llama")
    limit = matmul_limit(model, rows=32, device="cpu", dtype=torch.float32)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert sum(s["count"] for s in limit["by_shape"].values()) == len(linears)
    rates = [s["gflops_per_s"] for s in limit["by_shape"].values()]
    assert min(rates) <= limit["gflops_per_s"] <= max(rates)  # the model's mix lies between


@pytest.mark.slow
def test_roofline_reports_the_fraction_of_the_limit_its_own_numbers_give(tmp_path):
    result = bench_roofline([*small_run_overrides(tmp_path), "eval.limit=2"])
    reached = result["tokens"] * result["flops_per_token"]["total"] / result["forward_seconds"]
    assert result["tokens"] > 0 and result["matmul_limit"]["rows"] == 8 * 256
    fraction = reached / 1e9 / result["matmul_limit"]["gflops_per_s"]
    assert result["fraction_of_limit"] == pytest.approx(fraction, rel=0.02)


@pytest.mark.slow
def test_the_stages_of_a_sweep_add_up_to_its_time(tmp_path):
    stages = sweep_stages([*small_run_overrides(tmp_path), "sweep.fractions=[0,1]"])
    assert stages["points"] == 3  # reference, k = 0, k = L
    names = ("load", "scores", "kl_reference", "quantize", "evaluate", "bookkeeping")
    parts = [stages[s] for s in names]
    assert min(parts[:5]) >= 0 and stages["evaluate"] > 0
    # the KL reference is one pass over the held-out text: about a point's KL pass, and
    # no longer hidden in the bookkeeping (claims and records: far less than a pass)
    assert stages["kl_reference"] > 0.2 * stages["evaluate"] / stages["points"]
    assert stages["bookkeeping"] < stages["kl_reference"]
    assert sum(parts) == pytest.approx(stages["total"], abs=0.05)


def test_a_run_of_one_backend_keeps_the_stages_of_the_other():
    def stages(evaluate, quantize):
        return {"load": 1.0, "evaluate": evaluate, "quantize": quantize}

    kept = {
        "command": "python -m bench --section stages quant=rtn",
        "by_blocks": {"8": {"rtn": stages(5.0, 0.1)}, "32": {"rtn": stages(20.0, 0.4)}},
    }
    gptq = {
        "command": "python -m bench --section stages quant=gptq",
        "by_blocks": {"8": {"gptq": stages(5.0, 9.0)}, "32": {"gptq": stages(20.0, 30.0)}},
    }
    merged = merge_stages(kept, gptq)
    assert merged["by_blocks"]["32"] == {"rtn": stages(20.0, 0.4), "gptq": stages(20.0, 30.0)}
    assert merged["slowest_at_deepest"] == {"rtn": "evaluate", "gptq": "quantize"}
    assert "quant=rtn" in merged["command"] and "quant=gptq" in merged["command"]
    other_depths = {"by_blocks": {"4": {"rtn": stages(1.0, 0.1)}}}
    assert merge_stages(other_depths, gptq)["by_blocks"] == gptq["by_blocks"]  # not comparable


@pytest.mark.slow
def test_a_deepened_copy_repeats_the_blocks_in_order_and_runs(tmp_path):
    path = deepened_copy([f"model.path={REF_MODEL}"], 14, tmp_path / "deep")
    run = compose_run(f"model.path={path}", "model.blocks=14")
    model, tokenizer, blocks, _ = load(run)
    _, _, own, _ = load(compose_run(f"model.path={REF_MODEL}"))
    assert len(blocks) == 14 and model.config.num_hidden_layers == 14
    for i in (0, 5, 12, 13):  # ref-tiny has 12: blocks 12 and 13 are its 0 and 1 again
        mine, theirs = blocks[i].state_dict(), own[i % len(own)].state_dict()
        assert all(torch.equal(mine[name], theirs[name]) for name in theirs)
    ids = tokenizer("a deepened copy runs", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.mark.slow
def test_memory_counts_tied_weights_once_and_reads_fresh_processes(tmp_path):
    ballast = torch.ones(3 * 2**28)  # 3 GiB touched here: a child must not report this peak
    result = bench_memory([*small_run_overrides(tmp_path), "eval.limit=1"])
    del ballast
    assert result["load_only_peak_rss_mb"] < 3 * 1024  # ref-tiny loads in well under 1 GiB
    model, _, blocks, _ = load(compose_run(f"model.path={REF_MODEL}"))
    params = {p.data_ptr(): p for p in model.parameters()}
    buffers = sum(b.numel() * b.element_size() for b in model.buffers() if b.data_ptr())
    own = sum(p.numel() * p.element_size() for p in params.values())
    rounding = 0.05 * 2**20  # the result is in MB to one decimal
    assert own - rounding <= result["weights_mb"] * 2**20 <= own + buffers + rounding
    kept = sum(p.numel() * p.element_size() for p in blocks.parameters())
    assert result["kept_originals_mb"] == round(kept / 2**20, 1)
    assert result["sweep_peak_rss_mb"] >= result["load_only_peak_rss_mb"] > result["weights_mb"]
