"""Method plans beside the two-level orders at the same bytes (lwq.results.at_bytes): each
order's point with the most bytes not above the plan's, exact or under; random orders as
mean and spread over seeds; only records of the same backend and tasks compared."""

from __future__ import annotations

import statistics

import pytest

from lwq.results.at_bytes import compare_at_bytes, format_at_bytes

METRIC = "t:token_perplexity"
RTN = {"name": "rtn", "group_size": 128}


def point(kind, bytes_, value, *, metric=None, k=0, seed=None, quant=RTN, **extra):
    return {
        "kind": kind,
        "weight_bytes": bytes_,
        "k": k,
        "metric": metric,
        "metric_settings": {} if seed is None else {"seed": seed},
        "quant": quant,
        "eval": {"tasks": {"lwq_t": {"token_perplexity": value}}},
        **extra,
    }


def ladder(metric, values, seed=None, quant=RTN):
    """A two-level order's points: k = 0.. at 1000, 900, 800, ... bytes."""
    return [
        point("quantized", 1000 - 100 * k, v, metric=metric, k=k, seed=seed, quant=quant)
        for k, v in enumerate(values)
    ]


def test_each_order_gives_its_point_with_the_most_bytes_not_above_the_plans():
    records = [
        point("allocated", 800, 20.0),
        point("allocated", 850, 19.0, allocate_method="search"),
        point("allocated", 800, 18.0, unit="linear"),
        *ladder("ldi", [10.0, 15.0, 21.0, 30.0]),
        *ladder("zd", [10.0, 16.0, 25.0, 40.0]),
    ]
    exact, under, finer = compare_at_bytes(records, METRIC)
    assert finer.label == "allocated/linear" and finer.value == 18.0
    assert (exact.label, exact.weight_bytes, exact.value) == ("allocated", 800, 20.0)
    by_order = {b.order: b for b in exact.baselines}
    assert by_order["ldi"].value == 21.0 and by_order["ldi"].exact  # k=2 at 800 bytes
    assert by_order["zd"].value == 25.0 and by_order["zd"].spread is None
    assert under.label == "searched"
    ldi = next(b for b in under.baselines if b.order == "ldi")
    assert (ldi.value, ldi.weight_bytes, ldi.exact) == (21.0, 800, False)  # not the 900 B point


def test_random_orders_give_the_mean_and_spread_of_each_seeds_point():
    records = [
        point("allocated", 700, 20.0),
        *ladder("random", [10.0, 12.0, 14.0, 18.0], seed=0),
        *ladder("random", [10.0, 13.0, 17.0, 26.0], seed=1),
        *ladder("random", [10.0, 11.0, 12.0, 22.0], seed=2),
    ]
    (row,) = compare_at_bytes(records, METRIC)
    (random,) = row.baselines
    assert random.seeds == 3 and random.exact
    assert random.value == pytest.approx(statistics.fmean([18.0, 26.0, 22.0]))
    assert random.spread == pytest.approx(statistics.pstdev([18.0, 26.0, 22.0]))
    assert "+- " in format_at_bytes([row], METRIC) and "same bytes" in format_at_bytes(
        [row], METRIC
    )


def test_other_backends_and_orders_without_a_point_under_the_bytes_are_left_out():
    gptq = {"name": "gptq", "group_size": 128}
    records = [
        point("allocated", 650, 20.0),
        *ladder("ldi", [10.0, 15.0, 21.0, 30.0, 44.0], quant=gptq),  # another backend
        *ladder("position", [10.0, 15.0]),  # reaches down to 900 bytes only
        *ladder("zd", [10.0, 16.0, 25.0, 40.0, 50.0]),
    ]
    (row,) = compare_at_bytes(records, METRIC)
    assert [b.order for b in row.baselines] == ["zd"]
    assert row.baselines[0].weight_bytes == 600 and not row.baselines[0].exact
