"""Figures from the records of a real tiny sweep: every file is written, and the data
drawn (read back from the matplotlib artists) equal the records."""

from __future__ import annotations

import statistics

import pytest

from lwq.commands.sweep import run_sweep
from lwq.errors import LwqError
from lwq.figures import build_figures, load_results, main, parse_perf
from lwq.figures.select import ModelRecords
from lwq.results.store import RecordStore
from tests.conftest import compose_config, small_run_overrides

pytestmark = pytest.mark.slow  # real sweeps write the records every figure is drawn from

MODEL = "ref-tiny"
PPL = ("lwq_ppl_ref_heldout", "byte_perplexity")
SWEEPS = (  # the orderings of the paper's figures, plus one 8 -> 4 sweep
    [],
    ["metric=zd"],
    ["metric=random", "metric.seeds=2"],  # seeds 0 and 1 in one run
    ["metric.reverse=true"],
    ["sweep.high=8", "sweep.low=4"],
    ["baseline=prune"],  # remove the k least important blocks, the rest at 4 bits
)
DRAWN = ("24bits", "4bit_plot", "removal_4bits", "intersec", "blocks", "scores", "size")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results dir written by real sweeps: 3 points each, 2 eval documents."""
    tmp = tmp_path_factory.mktemp("figures")
    for extra in SWEEPS:
        run_sweep(compose_config(*small_run_overrides(tmp), "eval.limit=2", *extra))
    return tmp / "results"


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


def _sweep(records, metric, *, high=4, low=2, reverse=False, seed=None, kind="quantized"):
    """{k: record} of one sweep, selected from the raw records independently of lwq.figures."""
    return {
        r["k"]: r
        for r in records
        if r["kind"] == kind
        and (r["metric_canonical"], r["reverse"], r["high"], r["low"])
        == (metric, reverse, high, low)
        and (seed is None or r["metric_settings"]["seed"] == seed)
    }


def _lines(fig, axes=0):
    return {line.get_label(): line for line in fig.axes[axes].get_lines()}


def _xy(line):
    return list(line.get_xdata()), list(line.get_ydata())


def test_every_figure_is_a_png_and_a_pdf_and_gets_one_line(built):
    outcomes, lines, out = built
    assert sorted(outcomes) == sorted([*DRAWN, "removal_8bits", "34bits"])
    for family in DRAWN:
        assert outcomes[family].missing is None, outcomes[family].missing
        png, pdf = out / f"{family}_{MODEL}.png", out / f"{family}_{MODEL}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert pdf.read_bytes()[:5] == b"%PDF-"
    for outcome in outcomes.values():
        assert sum(line.startswith(f"{outcome.name}: ") for line in lines) == 1
    assert "lwq_ppl_ref_heldout:byte_perplexity" in lines[0]  # the default performance


def test_24bits_curves_band_and_references_equal_the_records(built, records):
    fig = built[0]["24bits"].fig
    lines = _lines(fig)
    for label, metric, reverse in [("LIM (ldi)", "ldi", False), ("ZD", "zd", False),
                                   ("reverse LIM (ldi)", "ldi", True)]:  # fmt: skip
        sweep = _sweep(records, metric, reverse=reverse)
        assert _xy(lines[label]) == (sorted(sweep), [_ppl(sweep[k]) for k in sorted(sweep)])
    seeds = [_sweep(records, "random", seed=s) for s in (0, 1)]
    ks = sorted(seeds[0])
    xs, ys = _xy(lines["random (mean of 2 seeds)"])
    assert xs == ks
    assert ys == pytest.approx([statistics.fmean(_ppl(s[k]) for s in seeds) for k in ks])
    (band,) = [c for c in fig.axes[0].collections if c.get_label().startswith("random: min-max")]
    vertices = band.get_paths()[0].vertices
    for k in ks:
        drawn = {y for x, y in vertices if x == k}
        assert drawn == {min(_ppl(s[k]) for s in seeds), max(_ppl(s[k]) for s in seeds)}
    reference = next(r for r in records if r["kind"] == "reference")
    assert set(lines["unquantized (16-bit)"].get_ydata()) == {_ppl(reference)}
    k0 = lines["all blocks 4-bit (k=0)"].get_ydata()
    assert list(k0) == pytest.approx([_ppl(seeds[0][0])] * 2)
    assert fig.axes[0].get_yscale() == "log"
    (bits,) = fig.axes[0].child_axes  # top axis: average bits = 4 - (k/12)(4 - 2)
    assert bits.get_xlabel().startswith("average bits")
    k_lo, k_hi = fig.axes[0].get_xlim()
    assert sorted(bits.get_xlim()) == pytest.approx([4 - k_hi / 6, 4 - k_lo / 6])
    notes = built[0]["24bits"].notes
    assert not any(n.startswith("missing") for n in notes), notes


def test_average_bits_axis_formula_matches_the_records(records):
    """The top axis draws high - (k/L)(high - low); every record's avg_bits is exactly that."""
    for r in records:
        if r["kind"] == "quantized":
            expected = r["high"] - r["k"] / r["n_blocks"] * (r["high"] - r["low"])
            assert r["avg_bits"] == pytest.approx(expected)


def test_4bit_plot_shows_the_8_to_4_sweep_and_names_the_missing_orderings(built, records):
    outcome = built[0]["4bit_plot"]
    sweep = _sweep(records, "ldi", high=8, low=4)
    assert _xy(_lines(outcome.fig)["LIM (ldi)"]) == (
        sorted(sweep),
        [_ppl(r) for r in sweep.values()],
    )
    assert set(_lines(outcome.fig)) >= {"unquantized (16-bit)", "all blocks 8-bit (k=0)"}
    missing = " ".join(outcome.notes)
    assert "missing ZD" in missing and "metric=zd sweep.high=8 sweep.low=4" in missing


def test_removal_8bits_names_the_missing_pruned_records(built):
    outcomes, lines, out = built
    outcome = outcomes["removal_8bits"]
    assert outcome.fig is None and not list(out.glob("removal_8bits*"))
    assert "no pruned records (kind=pruned, high=8, metric_canonical=ldi" in outcome.missing
    assert "no quantized" not in outcome.missing  # the 8 -> 4 ldi sweep is there
    assert sum(line.startswith(f"removal_8bits_{MODEL}: not drawn: ") for line in lines) == 1


def test_removal_4bits_compares_quantized_and_removed_blocks(built, records):
    outcome = built[0]["removal_4bits"]
    lines = _lines(outcome.fig)
    quantized = _sweep(records, "ldi")
    pruned = _sweep(records, "ldi", low=None, kind="pruned")
    assert sorted(pruned) == [0, 6]  # a model without blocks cannot run: no k = L
    for label, sweep in [("2-bit: quantize k blocks (LIM (ldi) order)", quantized),
                         ("removed: prune k blocks (LIM (ldi) order)", pruned)]:  # fmt: skip
        assert _xy(lines[label]) == (sorted(sweep), [_ppl(sweep[k]) for k in sorted(sweep)])
    assert pruned[6]["removed_blocks"] == quantized[6]["low_blocks"]
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
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["LIM (ldi)", "ZD"]
    ldi = next(iter(_sweep(records, "ldi").values()))["scores"]
    zd = next(iter(_sweep(records, "zd").values()))["scores"]
    assert drawn[0] == pytest.approx(rank_importance(ldi, higher_is_important=True))
    assert drawn[1] == pytest.approx(rank_importance(zd, higher_is_important=False))
    assert drawn[0].index(1.0) == ldi.index(max(ldi))
    assert drawn[1].index(1.0) == zd.index(min(zd))  # lower = important
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels[:12] == [f"{s:.2g}" for s in ldi]  # every block's value written


def test_scores_panels_hold_the_raw_scores(built, records):
    fig = built[0]["scores"].fig
    for axes, metric, label in [(0, "ldi", "LIM (ldi)"), (1, "zd", "ZD")]:
        scores = next(iter(_sweep(records, metric).values()))["scores"]
        assert _xy(_lines(fig, axes)[label]) == (list(range(12)), scores)
    colours = {ax.get_lines()[0].get_color() for ax in fig.axes}
    ours = {line.get_color() for line in _lines(built[0]["24bits"].fig).values()}
    assert colours <= ours  # one colour per metric across figures


def test_size_figure_plots_weight_bytes_against_performance(built, records):
    lines = _lines(built[0]["size"].fig)
    for label, high, low in [("rtn 4→2 bits", 4, 2), ("rtn 8→4 bits", 8, 4)]:
        sweep = _sweep(records, "ldi", high=high, low=low)
        expected = (
            [r["weight_bytes"] / 1e6 for r in sweep.values()],
            [_ppl(r) for r in sweep.values()],
        )
        assert _xy(lines[label]) == expected


def test_performance_selection(records):
    assert str(parse_perf(None, records)) == "lwq_ppl_ref_heldout:byte_perplexity"
    assert str(parse_perf("ppl_ref_heldout:word_perplexity", records)).startswith("lwq_")
    assert parse_perf("cross_check:token_perplexity", records).value(records[0]) > 1
    assert not parse_perf("lwq_ppl_ref_heldout:bits_per_byte", records).log_scale
    with pytest.raises(LwqError, match="did you mean 'lwq_ppl_ref_heldout:byte_perplexity'"):
        parse_perf("lwq_ppl_ref_heldout:byte_perplexty", records)


def test_a_metric_no_record_carries_skips_only_the_performance_figures(results, tmp_path):
    lines = []
    outcomes = build_figures(results, tmp_path, perf="average:acc", echo=lines.append)
    drawn = {o.name.removesuffix(f"_{MODEL}") for o in outcomes if o.missing is None}
    assert drawn == {"intersec", "blocks", "scores"}
    assert "no record carries 'average:acc'" in lines[0]
    assert all("no record carries 'average:acc'" in o.missing for o in outcomes if o.missing)


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
