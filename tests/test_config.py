"""Every config group option composes, resolves and names something that exists."""

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from lwq.metrics import METRICS
from lwq.quant import BACKENDS, make_backend
from run import command_words_to_overrides
from tests.conftest import CONF, ROOT, compose_config

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def test_every_group_has_options():
    assert {"model", "metric", "quant", "calib", "eval", "tracking"} <= set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_resolves(group, option):
    cfg = compose_config(f"{group}={option}")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved[group]  # the group is present and non-empty
    assert cfg.metric.name in METRICS.names()
    backend = make_backend(cfg.quant.name, **cfg.quant.settings)
    assert backend.name in BACKENDS.names()
    assert cfg.tracking.name in ("wandb", "none")


def test_metric_files_are_named_like_their_registry_key():
    for path in (CONF / "metric").glob("*.yaml"):
        assert OmegaConf.load(path).name == path.stem


def test_the_bare_command_word_becomes_an_override():
    argv = ["model=llama2-13b", "metric=ldi", "sweep"]
    assert command_words_to_overrides(argv) == ["model=llama2-13b", "metric=ldi", "command=sweep"]


def test_paper_models_calibrate_and_evaluate_on_wikitext():
    cfg = compose_config("model=llama2-13b")
    assert cfg.calib.text == "wikitext2-train" and cfg.eval.text == "wikitext2-test"
    assert cfg.model.blocks == 40


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("metric=nope", "Could not find 'metric/nope'"),
        ("sweep.low=1", "cannot do 1 bits"),
        ("sweep.fractions=[1.5]", "outside [0, 1]"),
        ("command=plot", "unknown command 'plot'"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, override, message):
    proc = subprocess.run(
        [sys.executable, "run.py", override, "tracking=none", f"paths.results={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
