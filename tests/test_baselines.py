"""Issue 5 end to end on the reference model: pruning, seeded random orders, the exact
budget allocator, a hand-edited plan file, and the rank correlations with sensitivity."""

from __future__ import annotations

import pytest

from lwq.commands.compare import run_compare, sensitivity_summary
from lwq.commands.identity import run_identity
from lwq.commands.sweep import run_sweep
from tests.conftest import compose_config, records, small_run_overrides

pytestmark = pytest.mark.slow  # whole sweeps on the reference model


def test_pruning_sweep_removes_exactly_the_least_important_blocks(tmp_path):
    cfg = compose_config(*small_run_overrides(tmp_path), "baseline=prune", "sweep.blocks=[0,3,12]")
    run_sweep(cfg)
    pruned = [r for r in records(tmp_path) if r["kind"] == "pruned"]
    assert [r["k"] for r in pruned] == [0, 3]  # 12 of 12 cannot run and is left out
    three = pruned[1]
    assert three["removed_blocks"] == sorted(three["ranking"][:3])
    per_block = pruned[0]["block_bytes"][0]
    assert pruned[0]["weight_bytes"] - three["weight_bytes"] > 3 * per_block
    ppl = [r["eval"]["cross_check"]["token_perplexity"] for r in pruned]
    assert ppl[1] > ppl[0]


def test_random_with_several_seeds_gives_one_sweep_per_seed(tmp_path):
    cfg = compose_config(
        *small_run_overrides(tmp_path), "metric=random", "metric.seeds=3", "sweep.blocks=[4]"
    )
    run_sweep(cfg)
    points = [r for r in records(tmp_path) if r["kind"] == "quantized"]
    assert sorted(r["metric_settings"]["seed"] for r in points) == [0, 1, 2]
    assert len({tuple(r["ranking"]) for r in points}) == 3
    assert len({r["sweep_id"] for r in points}) == 3


def test_allocated_plan_is_within_budget_and_no_worse_than_two_level(tmp_path, capsys):
    cfg = compose_config(
        *small_run_overrides(tmp_path), "budget=3.25", "sweep.blocks=[5,6]", "sweep.fractions=null"
    )
    run_sweep(cfg)
    (point,) = [r for r in records(tmp_path) if r["kind"] == "allocated"]
    # the closing table sets it beside ldi's point with the most bytes not above its own
    fitting = [
        r
        for r in records(tmp_path)
        if r["kind"] == "quantized" and r["weight_bytes"] <= point["weight_bytes"]
    ]
    nearest = max(fitting, key=lambda r: r["weight_bytes"])
    printed = capsys.readouterr().out
    assert "at each plan's bytes" in printed
    if nearest["weight_bytes"] == point["weight_bytes"]:
        assert "[same bytes]" in printed
    else:
        assert f"[{nearest['weight_bytes']} B, under]" in printed
    assert point["avg_bits"] <= 3.25 and set(point["plan"]) <= {2, 3, 4, 8}
    table = {int(b): v for b, v in point["sensitivity_table"].items()}
    # the paper's plan at <= 3.25 bits: 5 of 12 blocks at 2 bits, the rest at 4, by KL@2
    low = sorted(range(12), key=lambda i: table[2][i])[:5]
    two_level = sum(table[2][i] if i in low else table[4][i] for i in range(12))
    assert point["predicted_sensitivity"] <= two_level + 1e-12


def test_a_plan_file_is_applied_exactly(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("".join(f"{i}: {8 if i in (0, 11) else 3}\n" for i in range(12)))
    run_sweep(
        compose_config(
            *small_run_overrides(tmp_path),
            f"plan_file={plan}",
            "sweep.blocks=[]",
            "sweep.fractions=null",
        )
    )
    (point,) = [r for r in records(tmp_path) if r["kind"] == "manual"]
    assert point["plan"] == [8] + [3] * 10 + [8]
    assert point["avg_bits"] == pytest.approx((16 + 30) / 12)


def test_compare_reports_spearman_for_each_cheap_metric(tmp_path):
    cfg = compose_config(*small_run_overrides(tmp_path), "command=compare")
    identity = run_identity(cfg, cfg.quant.backend, None)
    assert "not cached yet" in sensitivity_summary(cfg, identity, [])
    record = run_compare(cfg)
    rho = record["spearman_vs_sensitivity"]
    assert set(rho) == {"ldi", "zd", "position"}
    assert all(-1.0 <= v <= 1.0 for v in rho.values())
    kl2 = record["sensitivity_details"]["kl@2"]
    kl8 = record["sensitivity_details"]["kl@8"]
    assert all(a > b > -1e-6 for a, b in zip(kl2, kl8, strict=True))  # float noise near 0
    # Spearman computed here, independently: Pearson's r of average ranks, each score
    # oriented so that larger = more important (ZD's smaller share is more important).
    sensitivity = record["scores"]["sensitivity"]
    sign = {"ldi": 1, "zd": -1, "position": 1}
    for name, value in rho.items():
        oriented = [sign[name] * v for v in record["scores"][name]]
        assert value == pytest.approx(_spearman(oriented, sensitivity), abs=1e-12), name
    ldi = {
        "metric": "ldi",
        "reverse": False,
        "metric_settings": {},
        "higher_is_important": True,
        "scores": record["scores"]["ldi"],
    }
    assert f"ldi {{}}: {_spearman(ldi['scores'], sensitivity):+.3f}" in sensitivity_summary(
        cfg, identity, [ldi]
    )


def _average_ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for j in range(start, end + 1):
            ranks[order[j]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _average_ranks(a), _average_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var_a = sum((x - ma) ** 2 for x in ra)
    var_b = sum((y - mb) ** 2 for y in rb)
    return cov / (var_a * var_b) ** 0.5
