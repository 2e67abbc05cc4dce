"""Every pinned experiment (conf/experiment/) composes, and runs in a debug mode: a shrunk
copy of its model, two points, its first ordering."""

from __future__ import annotations

import pytest
import yaml
from transformers import AutoTokenizer

from lwq.commands.sweep import run_sweep
from tests.conftest import CONF, REF_MODEL, compose_config, records
from tests.shrunk import shrunk_from_conf

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
WIDTHS = {"24bits": (4, 2), "4bit_plot": (8, 4), "removal_8bits": (8, 4), "removal_4bits": (4, 2)}
FIGURES = {p.stem: yaml.safe_load(p.read_text()) for p in (CONF / "experiment/figure").glob("*")}


def _parts(name: str) -> tuple[str, str]:
    """(figure, model) of an experiment named <figure>_<model>."""
    figure = next(f for f in sorted(FIGURES, key=len, reverse=True) if name.startswith(f"{f}_"))
    return figure, name.removeprefix(f"{figure}_")


def _orderings(figure: str) -> list[str]:
    return FIGURES[figure]["hydra"]["sweeper"]["params"]["ordering"].split(",")


def test_every_figure_has_an_experiment_for_every_model():
    models = {p.stem for p in (CONF / "model").glob("*.yaml")}
    assert {_parts(name) for name in EXPERIMENTS} == {(f, m) for f in FIGURES for m in models}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_and_ordering_composes(name):
    figure, model = _parts(name)
    for ordering in _orderings(figure):
        run = compose_config(f"experiment={name}", f"ordering={ordering}")
        assert run.model.name == model and run.quant.name == "gptq"
        assert (run.sweep.high, run.sweep.low) == WIDTHS[figure]
        assert (run.baseline == "prune") == ordering.endswith("pruned")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(REF_MODEL)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_runs_in_debug_mode(name, tmp_path, tokenizer):
    figure, model = _parts(name)
    path = REF_MODEL
    if model != "ref-tiny":
        path = tmp_path / "model"
        shrunk_from_conf(
            CONF / "model" / f"{model}.yaml", vocab_size=len(tokenizer)
        ).save_pretrained(path)
        tokenizer.save_pretrained(path)
    overrides = [
        f"experiment={name}",
        f"ordering={_orderings(figure)[0]}",
        f"model.path={path}",
        "model.trust_remote_code=false",  # the shrunk copy is a stock transformers class
        "model.max_length=128",
        "calib.text=ref-calib",  # the paper's wikitext2-train is on the hub
        "calib.samples=2",
        "calib.seq_len=32",
        "eval.text=ref-heldout",
        "eval.limit=1",
        "eval.chunk_chars=600",
        "quant.settings.group_size=32",
        "sweep.fractions=[0,1]",
        "tracking=none",
        f"paths.results={tmp_path / 'results'}",
    ]
    written = run_sweep(compose_config(*overrides))
    keys = [r["point_key"] for r in records(tmp_path, model)]
    assert len(written) == 3 and [r["point_key"] for r in written] == keys  # reference + 2
    assert {r["quant"]["name"] for r in written} == {"gptq"}
