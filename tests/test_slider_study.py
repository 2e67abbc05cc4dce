"""The SliderQuant study's scripts (experiments/slider*.{sh,py}) read what lwq writes: the
table shows every committed point's own numbers, and the figure reads `run.py scores`."""

from __future__ import annotations

import sys

import pytest

from lwq.commands.scores import run_scores
from lwq.results.store import RecordStore
from lwq.results.table import metric_columns, ranked_metric
from tests.conftest import ROOT, compose_config, small_run_overrides

sys.path.insert(0, str(ROOT / "experiments"))
import slider_figure  # noqa: E402  (scripts, not a package)
import slider_table  # noqa: E402

COMMITTED = ROOT / "experiments" / "records" / "slider"


def test_the_figure_reads_the_scores_run_py_prints(tmp_path, capsys):
    run = compose_config(*small_run_overrides(tmp_path), "metric=ldi")
    printed = run_scores(run)["scores"]
    out = tmp_path / "sensitivity-rtn.txt"
    out.write_text(capsys.readouterr().out)
    assert slider_figure.read_scores(out) == pytest.approx(printed, rel=1e-5)
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-3] + lines[-1:]))  # blocks missing
    with pytest.raises(SystemExit, match="no complete block list"):
        slider_figure.read_scores(out)


@pytest.mark.parametrize("model", sorted(p.name for p in COMMITTED.glob("*") if p.is_dir()))
def test_the_table_shows_each_committed_uniform_point_once_with_its_numbers(model, capsys):
    path = COMMITTED / model / "records.jsonl"
    slider_table.main(model, str(path))
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if "| " in line]
    records = [r for r in RecordStore(path).read() if r["kind"] == "quantized"]
    uniform = [r for r in records if r["high"] == 3]
    assert uniform and {r["quant"]["name"] for r in uniform} == {"rtn", "gptq", "slider"}
    ppl = ranked_metric(list(metric_columns(uniform[0])))
    preset = slider_table._preset(records)
    for record in uniform:
        group = str(record["quant"].get("group_size") or "channel")
        wanted = [
            group.lstrip("| "),
            str(record["plan"][0]),
            slider_table.label(record, preset),
            f"{record['bits_per_weight']:.3f}",
            f"{metric_columns(record)[ppl]:.4g}",
        ]
        assert sum(row[:5] == wanted for row in [[r[0].lstrip("| "), *r[1:]] for r in rows]) == 1
