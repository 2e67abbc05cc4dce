"""Predicted vs realized damage (lwq.commands.damage): with the run's sensitivity table
cached, every evaluated plan's record has the summed table KL and the whole plan's KL on
the calibration tokens; for a plan with one quantized block the two are the same measure."""

from __future__ import annotations

import pytest

from lwq.commands.sweep import run_sweep
from tests.conftest import compose_config, records, small_run_overrides


@pytest.mark.slow
def test_records_carry_predicted_and_realized_damage(tmp_path):
    base = [*small_run_overrides(tmp_path), "allowed_bits=[2,4,8]", "sweep.fractions=null"]
    # the budget makes the sweep compute and cache the sensitivity table
    run_sweep(compose_config(*base, "budget=4", "sweep.blocks=[0,1,6]"))
    # then a sweep with 16 -> 2: one low block is a one-block plan
    run_sweep(compose_config(*base, "sweep.high=16", "sweep.low=2", "sweep.blocks=[1,12]"))
    written = [r for r in records(tmp_path) if r["kind"] != "reference"]
    assert all("damage" in r for r in written), [r["kind"] for r in written]
    (one,) = [r for r in written if r["high"] == 16 and r["k"] == 1]
    damage = one["damage"]
    (low_block,) = one["low_blocks"]
    table = next(r for r in written if r["kind"] == "allocated")["sensitivity_table"]
    assert damage["predicted_kl"] == pytest.approx(table["2"][low_block], rel=1e-12)
    assert damage["calibration_kl"] == pytest.approx(damage["predicted_kl"], rel=1e-5)
    (every,) = [r for r in written if r["high"] == 16 and r["k"] == 12]
    assert every["damage"]["predicted_kl"] == pytest.approx(sum(table["2"]), rel=1e-12)


def _record(kind, predicted, calibration, heldout):
    return {
        "kind": kind,
        "damage": {"predicted_kl": predicted, "calibration_kl": calibration},
        "eval": {"kl": {"mean": heldout}},
    }


def test_agreement_is_rank_correlation_and_median_ratio():
    from lwq.figures.damage import agreement

    fit = agreement([1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 9.0, 8.0])
    assert fit["spearman"] == pytest.approx(0.8)
    assert fit["median_ratio"] == pytest.approx(2.0)  # ratios 2, 1.5, 3, 2


def test_damage_figure_draws_both_panels_and_names_what_it_lacks():
    from lwq.figures.damage import damage_figure, damage_points
    from lwq.figures.select import MissingRecords, ModelRecords

    records = [_record("ldi", p, 1.1 * p, 1.3 * p) for p in (0.01, 0.02, 0.05, 0.1)]
    records.append(_record("reference", 0.0, 0.0, 0.0))  # nothing quantized: left out
    assert len(damage_points(records)) == 4
    drawn = damage_figure(ModelRecords("m", records))
    titles = [ax.get_title() for ax in drawn.fig.axes]
    assert titles == ["rho = 1.000, median ratio 1.10", "rho = 1.000, median ratio 1.30"]
    with pytest.raises(MissingRecords, match="budget=3.25"):
        damage_figure(ModelRecords("m", records[:2]))
