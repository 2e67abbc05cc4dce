"""The README's SmolLM2 and ref-tiny figures and takeaways come from the records committed
under experiments/records/: drawn on a clone with no results of its own, the curves
equal those records (selected here without lwq.figures), and the takeaways' counts agree
with a count made here from the raw records."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import pytest

from lwq.figures import build_figures
from lwq.figures.cli import COMMITTED
from lwq.results.store import RecordStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import takeaways  # noqa: E402  (a script, not a package)

MODELS = {"smollm2-135m": "lwq_ppl_wikitext2_test_heldout", "ref-tiny": "lwq_ppl_ref_heldout"}


def _records(model: str) -> list[dict]:
    path = COMMITTED / model / "records.jsonl"
    assert path.is_file(), f"{path} is committed with the experiments (experiments/README.md)"
    return [r for r in RecordStore(path).read() if r.get("status", "ok") == "ok"]


def _ppl(record: dict, task: str, metric: str = "byte_perplexity") -> float:
    return record["eval"]["tasks"][task][metric]


def _crossing(ppl: dict[int, float], rise: float) -> float:
    """Where perplexity first passes (1 + rise) x its k = 0 value, log-linear between ks."""
    ks = sorted(ppl)
    limit = ppl[0] * (1 + rise)
    beyond = next((i for i, k in enumerate(ks) if ppl[k] > limit), None)
    if beyond is None:
        return float(ks[-1])
    a, b = ks[beyond - 1], ks[beyond]
    share = (math.log(limit) - math.log(ppl[a])) / (math.log(ppl[b]) - math.log(ppl[a]))
    return a + (b - a) * share


def _ldi_gptq_4_to_2(records: list[dict]) -> dict[int, dict]:
    """{k: newest record} of the LIM 4 -> 2 GPTQ sweep, picked from the raw records."""
    return {
        r["k"]: r
        for r in records
        if r["kind"] == "quantized"
        and (r["metric_canonical"], r["reverse"], r["high"], r["low"]) == ("ldi", False, 4, 2)
        and r["quant"]["name"] == "gptq"
        and r["config"]["eval"]["name"] == "ppl"
    }


@pytest.mark.parametrize("model", sorted(MODELS))
def test_figures_of_a_fresh_clone_are_drawn_from_the_committed_records(model, tmp_path):
    lines: list[str] = []
    empty = tmp_path / "results"  # a fresh clone: nothing run yet
    empty.mkdir()
    outcomes = build_figures(
        empty,
        tmp_path / "out",
        models=[model],
        formats=(),  # drawn, not saved: test_figures.py checks the files of every figure
        committed=COMMITTED,
        echo=lines.append,
    )
    assert f"{model}: drawn from the committed records in {COMMITTED}" in lines
    drawn = {o.name.removesuffix(f"_{model}"): o for o in outcomes}
    for family in ("24bits", "4bit_plot", "34bits", "removal_4bits", "removal_8bits", "blocks"):
        assert drawn[family].missing is None, drawn[family].missing
    sweep = _ldi_gptq_4_to_2(_records(model))
    assert len(sweep) >= 11  # every k (ref-tiny) or every third (SmolLM2)
    lines_by_label = {line.get_label(): line for line in drawn["24bits"].fig.axes[0].get_lines()}
    lim = next(line for label, line in lines_by_label.items() if label == "LIM (ldi) [GPTQ]")
    xs, ys = list(lim.get_xdata()), list(lim.get_ydata())
    assert xs == sorted(sweep)
    assert ys == pytest.approx([_ppl(sweep[k], MODELS[model]) for k in xs], rel=1e-12)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_takeaway_counts_agree_with_a_count_from_the_raw_records(model):
    records = _records(model)
    sweep = _ldi_gptq_4_to_2(records)
    ppl = {k: _ppl(r, MODELS[model], "token_perplexity") for k, r in sorted(sweep.items())}
    expected = {rise: _crossing(ppl, rise) for rise in takeaways.RISES}
    column = takeaways.takeaways_table(Path("no-such-results"), [model], "token_perplexity")
    row = next(line for line in column.splitlines() if line.startswith("| (a) 4→2 GPTQ: LIM |"))
    counts = f"{expected[0.05]:.1f} / {expected[0.10]:.1f} of {sweep[0]['n_blocks']}"
    assert row.split("|")[2].strip().startswith(counts + ";")


def test_the_random_row_counts_on_the_mean_of_the_five_seeds():
    records = _records("smollm2-135m")
    by_seed: dict[int, dict[int, float]] = {}
    for r in records:
        if (r["kind"], r.get("metric_canonical"), r.get("high"), r.get("low")) != (
            "quantized",
            "random",
            4,
            2,
        ):
            continue
        if r["quant"]["name"] == "gptq" and r["config"]["eval"]["name"] == "ppl":
            ppl = _ppl(r, MODELS["smollm2-135m"], "token_perplexity")
            by_seed.setdefault(r["metric_settings"]["seed"], {})[r["k"]] = ppl
    assert sorted(by_seed) == [0, 1, 2, 3, 4]
    ks = sorted(by_seed[0])
    mean = {k: statistics.fmean(by_seed[s][k] for s in by_seed) for k in ks}
    k5 = _crossing(mean, 0.05)
    table = takeaways.takeaways_table(Path("no-such-results"), ["smollm2-135m"], "token_perplexity")
    row = next(line for line in table.splitlines() if "(a) 4→2 GPTQ: random (mean) |" in line)
    assert row.split("|")[2].strip().startswith(f"{k5:.1f} / ")


def test_blocks_before_rise_interpolates_the_first_crossing_in_log_perplexity():
    curve = takeaways.Curve("ldi", False, {}, ks=[0, 3, 6, 9], mean=[10.0, 10.4, 11.2, 10.1])
    between = 3 + 3 * (math.log(10.5) - math.log(10.4)) / (math.log(11.2) - math.log(10.4))
    assert takeaways.blocks_before_rise(curve, 0.05) == pytest.approx(between)  # not 9
    assert takeaways.blocks_before_rise(curve, 0.15) == 9.0  # never beyond: every block
    no_start = takeaways.Curve("ldi", False, {}, ks=[3, 6], mean=[1.0, 1.0])
    assert takeaways.blocks_before_rise(no_start, 0.05) is None
