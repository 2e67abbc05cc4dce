"""End to end on the committed reference model: records, resume, the 16-bit identity."""

from __future__ import annotations

import json

import pytest

from lwq.commands.sweep import run_sweep
from tests.conftest import compose_config, small_run_overrides
from tests.conftest import records as _records

pytestmark = pytest.mark.slow  # whole sweeps on the reference model


def _ppl(record):
    return record["eval"]["cross_check"]["token_perplexity"]


@pytest.fixture(scope="module")
def first_sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    cfg = compose_config(*small_run_overrides(tmp_path))
    written = run_sweep(cfg)
    return tmp_path, written


def test_one_record_per_point_plus_the_reference(first_sweep):
    tmp_path, written = first_sweep
    records = _records(tmp_path)
    assert len(written) == len(records) == 4
    quantized = [r for r in records if r["kind"] == "quantized"]
    assert [r["k"] for r in quantized] == [0, 6, 12]
    assert [r["avg_bits"] for r in quantized] == [4.0, 3.0, 2.0]
    for r in quantized:
        assert r["plan"].count(2) == r["k"] and len(r["plan"]) == 12
        assert r["bits_per_weight"] > r["avg_bits"]  # scales and zero points cost bits
        assert r["eval"]["cross_check"]["agrees"], r["eval"]["cross_check"]


def test_quality_falls_as_more_blocks_go_to_2_bits(first_sweep):
    tmp_path, _ = first_sweep
    records = _records(tmp_path)
    reference = next(r for r in records if r["kind"] == "reference")
    ppl = [_ppl(r) for r in records if r["kind"] == "quantized"]
    assert _ppl(reference) < ppl[0] < ppl[1] < ppl[2]


def test_rerun_writes_nothing(first_sweep):
    tmp_path, _ = first_sweep
    before = (tmp_path / "results" / "ref-tiny" / "records.jsonl").read_text()
    written = run_sweep(compose_config(*small_run_overrides(tmp_path)))
    assert written == []
    assert (tmp_path / "results" / "ref-tiny" / "records.jsonl").read_text() == before


def test_lim_is_ldi_and_shares_its_points(first_sweep):
    tmp_path, _ = first_sweep
    written = run_sweep(compose_config(*small_run_overrides(tmp_path), "metric=lim"))
    assert written == []  # same canonical metric, same settings: every point is already there


def test_fraction_zero_with_16_bit_high_is_the_unquantized_model(tmp_path):
    cfg = compose_config(*small_run_overrides(tmp_path), "sweep.high=16", "sweep.fractions=[0]")
    run_sweep(cfg)
    records = _records(tmp_path)
    reference = next(r for r in records if r["kind"] == "reference")
    point = next(r for r in records if r["kind"] == "quantized")
    assert point["k"] == 0 and point["avg_bits"] == 16
    assert point["eval"]["tasks"] == reference["eval"]["tasks"]
    assert _ppl(point) == _ppl(reference)


# The fields records had before the run layer was rewritten (commit 91d735d): figures,
# resume and anyone's analysis scripts read them; then provenance and the plan key.
POINT_FIELDS = {
    "schema", "model", "quant", "eval_provenance", "versions", "device", "config",
    "kind", "k", "avg_bits", "point_key", "eval", "eval_memory", "seconds", "time",
    "seed", "code", "data_sha256", "weights_sha256", "weights_source", "plan_key",
}  # fmt: skip
PLAN_FIELDS = {
    "n_blocks", "fraction", "high", "low", "plan", "bits_per_weight", "weight_bytes",
    "block_bytes", "quantize_seconds", "quantize_memory",
}  # fmt: skip
ORDERING_FIELDS = {
    "metric", "metric_canonical", "metric_settings", "reverse", "baseline", "scores",
    "higher_is_important", "ranking", "sweep_id", "low_blocks", "score_seconds",
}  # fmt: skip


def test_records_carry_what_figures_and_reruns_need(first_sweep):
    tmp_path, _ = first_sweep
    records = _records(tmp_path)
    reference = next(r for r in records if r["kind"] == "reference")
    record = next(r for r in records if r["kind"] == "quantized")
    assert set(reference) == POINT_FIELDS
    assert set(record) == POINT_FIELDS | PLAN_FIELDS | ORDERING_FIELDS
    assert record["config"]["metric"]["name"] == "ldi"
    assert record["config"]["paths"]["results"] == str(tmp_path / "results")
    assert sorted(record["ranking"]) == list(range(12))
    assert record["low_blocks"] == sorted(record["ranking"][: record["k"]])
    json.dumps(record)  # plain JSON all the way down


def test_a_plan_is_evaluated_once_whichever_orderings_contain_it(tmp_path):
    """k = 0 and k = L are the same model for every ordering and seed: evaluated once, the
    other orderings' records reuse the result (and say so), each ordering stays complete."""
    run_sweep(compose_config(*small_run_overrides(tmp_path)))
    run_sweep(compose_config(*small_run_overrides(tmp_path), "metric=random", "metric.seeds=2"))
    records = [r for r in _records(tmp_path) if r["kind"] == "quantized"]
    by_key = {r["point_key"]: r for r in records}
    reused = [r for r in records if "reused_from" in r]
    assert sorted(r["k"] for r in reused) == [0, 0, 12, 12]  # both seeds, both ends
    for r in reused:
        source = by_key[r["reused_from"]]
        assert source["metric"] == "ldi" and source["plan"] == r["plan"]
        assert r["eval"] == source["eval"] and r["plan_key"] == source["plan_key"]
        assert r["seconds"] == 0.0 and r["metric"] == "random"
    for seed in (0, 1):  # every ordering has all its points
        ks = sorted(r["k"] for r in records if r.get("metric_settings", {}).get("seed") == seed)
        assert ks == [0, 6, 12]
