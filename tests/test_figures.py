"""Figures from the records committed under experiments/records/ref-tiny (a full set of
sweeps: two backends, every ordering, pruning): every file is written, and the data drawn
(read back from the matplotlib artists) equal the records, selected here without
lwq.figures. One end-to-end test runs a small sweep and draws its own records."""

from __future__ import annotations

import json
import shutil
import statistics

import pytest

from lwq.commands.sweep import run_sweep
from lwq.errors import LwqError
from lwq.figures import FAMILIES, build_figures, load_results, main, parse_perf
from lwq.figures.cli import COMMITTED
from lwq.figures.select import ModelRecords
from lwq.figures.style import metric_label
from lwq.results.store import RecordStore
from tests.conftest import compose_config, small_run_overrides

MODEL = "ref-tiny"
PPL = ("lwq_ppl_ref_heldout", "byte_perplexity")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results dir holding the committed ref-tiny records, as a sweep would leave them."""
    results = tmp_path_factory.mktemp("figures") / "results"
    (results / MODEL).mkdir(parents=True)
    shutil.copy(COMMITTED / MODEL / "records.jsonl", results / MODEL / "records.jsonl")
    return results


@pytest.fixture(scope="module")
def records(results):
    return RecordStore(results / MODEL / "records.jsonl").read()


@pytest.fixture(scope="module")
def built(results, tmp_path_factory):
    """(outcomes by figure family, stdout lines, output dir) of one full build."""
    out = tmp_path_factory.mktemp("out")
    lines = []
    outcomes = build_figures(results, out, echo=lines.append)
    return {o.name.removesuffix(f"_{MODEL}"): o for o in outcomes}, lines, out


def _ppl(record):
    return record["eval"]["tasks"][PPL[0]][PPL[1]]


def _sweep(
    records, metric, *, quant="gptq", high=4, low=2, reverse=False, seed=None, kind="quantized"
):
    """{k: record} of one sweep, selected from the raw records independently of lwq.figures."""
    return {
        r["k"]: r
        for r in records
        if r["kind"] == kind
        and (r["metric_canonical"], r["reverse"], r["high"], r.get("low"), r["quant"]["name"])
        == (metric, reverse, high, low, quant)
        and (seed is None or r["metric_settings"]["seed"] == seed)
    }


def _newest_scores(records, metric):
    """The scores of the newest non-reference record of `metric` (the figures' contract)."""
    return [r for r in records if r.get("metric_canonical") == metric and "scores" in r][-1][
        "scores"
    ]


def _lines(fig, axes=0):
    return {line.get_label(): line for line in fig.axes[axes].get_lines()}


def _xy(line):
    return list(line.get_xdata()), list(line.get_ydata())


def _curve(sweep):
    return sorted(sweep), [_ppl(sweep[k]) for k in sorted(sweep)]


# figures whose records the committed ref-tiny study does not hold yet, and what they say
NOT_COMMITTED_YET = {"damage": "budget=3.25"}  # the allocation study's records will


def test_every_figure_is_a_png_and_a_pdf_and_gets_one_line(built):
    outcomes, lines, out = built
    assert sorted(outcomes) == sorted(FAMILIES)
    for family, outcome in outcomes.items():
        if family in NOT_COMMITTED_YET:
            assert NOT_COMMITTED_YET[family] in outcome.missing
            continue
        assert outcome.missing is None, outcome.missing
        png, pdf = out / f"{family}_{MODEL}.png", out / f"{family}_{MODEL}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert pdf.read_bytes()[:5] == b"%PDF-"
        assert sum(line.startswith(f"{outcome.name}: ") for line in lines) == 1
    assert "lwq_ppl_ref_heldout:byte_perplexity" in lines[0]  # the default performance


def test_24bits_curves_band_and_references_equal_the_records(built, records):
    fig = built[0]["24bits"].fig
    lines = _lines(fig)
    curves = [
        ("LIM (ldi) [GPTQ]", "ldi", "gptq", False),
        ("LIM (ldi) [RTN]", "ldi", "rtn", False),
        ("ZD [GPTQ]", "zd", "gptq", False),
        ("position [GPTQ]", "position", "gptq", False),
        ("reverse LIM (ldi) [GPTQ]", "ldi", "gptq", True),
    ]
    for label, metric, quant, reverse in curves:
        assert _xy(lines[label]) == _curve(_sweep(records, metric, quant=quant, reverse=reverse))
    seeds = [_sweep(records, "random", seed=s) for s in range(5)]
    ks = sorted(seeds[0])
    xs, ys = _xy(lines["random [GPTQ] (mean of 5 seeds)"])
    assert xs == ks
    assert ys == pytest.approx([statistics.fmean(_ppl(s[k]) for s in seeds) for k in ks])
    (band,) = [c for c in fig.axes[0].collections if c.get_label().startswith("random [GPTQ]: min")]
    vertices = band.get_paths()[0].vertices
    for k in ks:
        drawn = {y for x, y in vertices if x == k}
        assert drawn == {min(_ppl(s[k]) for s in seeds), max(_ppl(s[k]) for s in seeds)}
    reference = next(r for r in records if r["kind"] == "reference")
    assert set(lines["unquantized (16-bit)"].get_ydata()) == {_ppl(reference)}
    assert list(lines["all blocks 4-bit (k=0)"].get_ydata()) == pytest.approx(
        [_mean_at_k0_over_curves(records, high=4, low=2)] * 2
    )
    assert fig.axes[0].get_yscale() == "log"
    (bits,) = fig.axes[0].child_axes  # top axis: average bits = 4 - (k/12)(4 - 2)
    assert bits.get_xlabel().startswith("average bits")
    k_lo, k_hi = fig.axes[0].get_xlim()
    assert sorted(bits.get_xlim()) == pytest.approx([4 - k_hi / 6, 4 - k_lo / 6])
    notes = built[0]["24bits"].notes
    assert not any(n.startswith("missing") for n in notes), notes


def _mean_at_k0_over_curves(records, *, high, low):
    """The mean over curves (ordering and backend; seeds averaged first) of k = 0."""
    at_k0 = {}
    for r in records:
        if (r["kind"], r.get("high"), r.get("low"), r.get("k")) == ("quantized", high, low, 0):
            curve = (r["metric_canonical"], r["reverse"], json.dumps(r["quant"], sort_keys=True))
            at_k0.setdefault(curve, []).append(_ppl(r))
    return statistics.fmean(statistics.fmean(values) for values in at_k0.values())


def test_average_bits_axis_formula_matches_the_records(records):
    """The top axis draws high - (k/L)(high - low); every record's avg_bits is exactly that."""
    quantized = [r for r in records if r["kind"] == "quantized"]
    assert quantized
    for r in quantized:
        expected = r["high"] - r["k"] / r["n_blocks"] * (r["high"] - r["low"])
        assert r["avg_bits"] == pytest.approx(expected)


def test_4bit_plot_shows_the_8_to_4_sweep_and_names_the_missing_orderings(built, records):
    outcome = built[0]["4bit_plot"]
    lines = _lines(outcome.fig)
    assert _xy(lines["LIM (ldi)"]) == _curve(_sweep(records, "ldi", quant="rtn", high=8, low=4))
    assert set(lines) >= {"unquantized (16-bit)", "all blocks 8-bit (k=0)"}
    missing = " ".join(outcome.notes)  # the committed records have no reversed 8 -> 4 sweep
    assert "missing reverse LIM (ldi)" in missing
    assert "metric=ldi sweep.high=8 sweep.low=4 metric.reverse=true" in missing


def test_removal_8bits_names_the_missing_pruned_records(results, records, tmp_path):
    without = tmp_path / "results" / MODEL
    without.mkdir(parents=True)
    kept = [line for line, r in zip(_lines_of(results), records, strict=True)
            if not (r["kind"] == "pruned" and r["high"] == 8)]  # fmt: skip
    (without / "records.jsonl").write_text("".join(kept))
    lines = []
    (outcome,) = build_figures(
        tmp_path / "results", tmp_path / "out", only=["removal_8bits"], echo=lines.append
    )
    assert outcome.fig is None and not list((tmp_path / "out").glob("removal_8bits*"))
    assert "no pruned records (kind=pruned, high=8, metric_canonical=ldi" in outcome.missing
    assert "no quantized" not in outcome.missing  # the 8 -> 4 ldi sweep is there
    assert sum(line.startswith(f"removal_8bits_{MODEL}: not drawn: ") for line in lines) == 1


def _lines_of(results):
    """The raw lines of the records file, one per record (none is damaged)."""
    return (results / MODEL / "records.jsonl").read_text().splitlines(keepends=True)


@pytest.mark.parametrize(
    ("family", "high", "low", "quant"),
    [("removal_4bits", 4, 2, "gptq"), ("removal_8bits", 8, 4, "rtn")],
)
def test_removal_compares_quantized_and_removed_blocks(built, records, family, high, low, quant):
    outcome = built[0][family]
    lines = _lines(outcome.fig)
    quantized = _sweep(records, "ldi", quant=quant, high=high, low=low)
    pruned = _sweep(records, "ldi", quant=quant, high=high, low=None, kind="pruned")
    assert sorted(pruned) == list(range(12))  # a model without blocks cannot run: no k = L
    for label, sweep in [(f"{low}-bit: quantize k blocks (LIM (ldi) order)", quantized),
                         ("removed: prune k blocks (LIM (ldi) order)", pruned)]:  # fmt: skip
        assert _xy(lines[label]) == _curve(sweep)
    for k in pruned:
        assert pruned[k]["removed_blocks"] == quantized[k]["low_blocks"]
    assert outcome.notes == []  # same blocks at every k, references present


def test_intersec_is_the_overlap_of_the_ranking_fields(built, records):
    ldi = next(iter(_sweep(records, "ldi").values()))["ranking"]
    zd = next(iter(_sweep(records, "zd").values()))["ranking"]
    xs, ys = _xy(_lines(built[0]["intersec"].fig)["LIM (ldi) & ZD"])
    assert xs == list(range(1, 13))
    assert ys == [len(set(ldi[-k:]) & set(zd[-k:])) for k in xs]
    reverse = next(iter(_sweep(records, "ldi", reverse=True).values()))["ranking"]
    assert reverse == ldi[::-1]  # reversed sweeps store the reversed order


def test_blocks_colours_are_the_importance_ranks(built, records):
    from lwq.figures.blocks import rank_importance

    fig = built[0]["blocks"].fig
    drawn = fig.axes[0].images[0].get_array().tolist()
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert rows[:2] == ["LIM (ldi)", "ZD"] and metric_label("random") not in rows
    ldi, zd = _newest_scores(records, "ldi"), _newest_scores(records, "zd")
    assert drawn[0] == pytest.approx(rank_importance(ldi, higher_is_important=True))
    assert drawn[1] == pytest.approx(rank_importance(zd, higher_is_important=False))
    assert drawn[0].index(1.0) == ldi.index(max(ldi))
    assert drawn[1].index(1.0) == zd.index(min(zd))  # lower = important
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels[:12] == [f"{s:.2g}" for s in ldi]  # every block's value written


def test_scores_panels_hold_the_raw_scores(built, records):
    fig = built[0]["scores"].fig
    metrics = ["ldi", "zd", "position"]
    for axes, metric in enumerate(metrics):
        label = metric_label(metric)
        assert _xy(_lines(fig, axes)[label]) == (list(range(12)), _newest_scores(records, metric))
    colours = {ax.get_lines()[0].get_color() for ax in fig.axes[: len(metrics)]}
    ours = {line.get_color() for line in _lines(built[0]["24bits"].fig).values()}
    assert colours <= ours  # one colour per metric across figures


def test_size_figure_plots_weight_bytes_against_performance(built, records):
    lines = _lines(built[0]["size"].fig)
    for quant, high, low in [("rtn", 8, 4), ("rtn", 4, 3), ("gptq", 4, 2), ("rtn", 4, 2)]:
        sweep = _sweep(records, "ldi", quant=quant, high=high, low=low)
        ks = sorted(sweep)
        expected = ([sweep[k]["weight_bytes"] / 1e6 for k in ks], [_ppl(sweep[k]) for k in ks])
        assert _xy(lines[f"{quant} {high}→{low} bits"]) == expected


def test_performance_selection(records):
    assert str(parse_perf(None, records)) == "lwq_ppl_ref_heldout:byte_perplexity"
    assert str(parse_perf("ppl_ref_heldout:word_perplexity", records)).startswith("lwq_")
    assert parse_perf("cross_check:token_perplexity", records).value(records[0]) > 1
    assert not parse_perf("lwq_ppl_ref_heldout:bits_per_byte", records).log_scale
    with pytest.raises(LwqError, match="did you mean 'lwq_ppl_ref_heldout:byte_perplexity'"):
        parse_perf("lwq_ppl_ref_heldout:byte_perplexty", records)


def test_a_metric_no_record_carries_skips_only_the_performance_figures(results, tmp_path):
    lines = []
    outcomes = build_figures(
        results, tmp_path, perf="average:acc", formats=("png",), echo=lines.append
    )
    drawn = {o.name.removesuffix(f"_{MODEL}") for o in outcomes if o.missing is None}
    assert drawn == {"intersec", "blocks", "scores"}
    assert "no record carries 'average:acc'" in lines[0]
    lacking = [o for o in outcomes if o.missing and not o.name.startswith("damage")]
    assert all("no record carries 'average:acc'" in o.missing for o in lacking)


def test_records_of_another_eval_setting_are_reported_not_mixed(records):
    older = {**records[1], "config": {**records[1]["config"], "eval": {"limit": 99}}}
    chosen = ModelRecords.newest_setting(MODEL, [older, *records])
    assert chosen.ignored == 1 and chosen.records == records
    assert "ignored 1 records" in chosen.describe()


def test_the_eval_option_picks_an_older_suite_and_bad_files_are_reported(records, tmp_path, capsys):
    quick = {**records[1], "config": {**records[1]["config"], "eval": {"name": "quick"}}}
    assert ModelRecords.newest_setting(MODEL, [*records, quick]).records == [quick]
    assert ModelRecords.newest_setting(MODEL, [*records, quick], "ppl").records == records
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "records.jsonl").write_text("{not json}\n")
    lines = []
    assert build_figures(tmp_path, tmp_path / "out", echo=lines.append) == []
    assert lines[0].startswith("broken: no records")  # its one line is damaged: not used
    assert "records.jsonl:1 is a damaged record" in capsys.readouterr().err


def test_cli_writes_the_selected_figures_and_fails_without_records(results, tmp_path, capsys):
    only = ["--only", "intersec", "--committed", ""]  # committed records: test_committed_records
    assert main(["--results", str(results), "--out", str(tmp_path), *only]) == 0
    assert (tmp_path / f"intersec_{MODEL}.pdf").exists()
    assert "1 of 1 figures written" in capsys.readouterr().out
    assert main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path), *only]) == 1
    assert "no records under" in capsys.readouterr().out
    assert set(load_results(results)) == {MODEL}


def test_blocks_are_coloured_by_rank_so_one_outlier_does_not_flatten_the_rest():
    from lwq.figures.blocks import rank_importance

    # SmolLM2-like LIM: block 0 tens of times the others; ranks still spread them evenly
    lim = [0.9, 0.01, 0.03, 0.02, 0.02]
    assert rank_importance(lim, higher_is_important=True) == [1.0, 0.0, 0.75, 0.375, 0.375]
    # ZD reads smaller as more important: the smallest score ranks highest
    assert rank_importance([0.3, 0.1, 0.2], higher_is_important=False) == [0.0, 1.0, 0.5]
    assert rank_importance([0.2, 0.2], higher_is_important=True) == [0.5, 0.5]


@pytest.mark.slow
def test_a_sweep_writes_the_records_its_figures_are_drawn_from(tmp_path):
    """End to end: a real (tiny) sweep, then its figures from its own records."""
    run_sweep(compose_config(*small_run_overrides(tmp_path), "eval.limit=2"))
    written = RecordStore(tmp_path / "results" / MODEL / "records.jsonl").read()
    lines = []
    out = tmp_path / "out"
    outcomes = build_figures(tmp_path / "results", out, formats=("png",), echo=lines.append)
    drawn = {o.name.removesuffix(f"_{MODEL}"): o for o in outcomes}
    assert "lwq_ppl_ref_heldout:byte_perplexity" in lines[0]
    for family in ("24bits", "blocks", "scores", "size"):
        assert drawn[family].missing is None, drawn[family].missing
        assert (out / f"{family}_{MODEL}.png").is_file()
    assert "no records of zd" in drawn["intersec"].missing  # one ordering swept
    sweep = _sweep(written, "ldi", quant="rtn")
    assert sorted(sweep) == [0, 6, 12]
    curves = _lines(drawn["24bits"].fig)
    assert _xy(curves["LIM (ldi)"]) == _curve(sweep)
    reference = next(r for r in written if r["kind"] == "reference")
    assert set(curves["unquantized (16-bit)"].get_ydata()) == {_ppl(reference)}
