"""The config boundary: every option composes into a checked RunConfig, and bad input from
the command line is one line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lwq.commands import COMMANDS as RUNNERS
from lwq.commands import run
from lwq.config import COMMANDS, RunConfig
from lwq.errors import LwqError
from lwq.metrics import METRICS
from lwq.quant import BACKENDS, make_backend
from run import check_before_hydra, command_words_to_overrides
from tests.conftest import CONF, REF_MODEL, ROOT, compose_config, refused_by_run_py

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
GLOBAL = ("experiment", "ordering")  # bundles of other groups' choices: test_experiments.py
OPTIONS = [
    (g, p.stem) for g in GROUPS if g not in GLOBAL for p in sorted((CONF / g).glob("*.yaml"))
]
WIDTHS_IT_CAN_DO = {"bnb": ["sweep.high=8", "sweep.low=4"]}  # the default sweep is 4 -> 2


def test_every_group_has_options():
    assert {"model", "metric", "quant", "calib", "eval", "tracking", "baseline"} <= set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_into_a_checked_run_config(group, option):
    run = compose_config(f"{group}={option}", *WIDTHS_IT_CAN_DO.get(option, []))
    assert isinstance(run, RunConfig)
    assert run.plain[group]  # the group is present and resolved
    assert run.metric.name in METRICS.names()
    backend = make_backend(run.quant.name, **run.quant.settings)
    assert backend.name in BACKENDS.names()
    assert run.paths.results.is_absolute() and run.paths.data.is_absolute()


def test_option_files_are_named_like_their_registry_key():
    for group, registry in (("metric", METRICS), ("quant", BACKENDS)):
        for path in (CONF / group).glob("*.yaml"):
            assert yaml.safe_load(path.read_text())["name"] == path.stem
            registry.get(path.stem)


def test_the_command_words_are_the_runners():
    assert set(COMMANDS) == set(RUNNERS)
    argv = ["model=llama2-13b", "metric=ldi", "sweep"]
    assert command_words_to_overrides(argv) == ["model=llama2-13b", "metric=ldi", "command=sweep"]


def test_paper_models_calibrate_and_evaluate_on_wikitext():
    run = compose_config("model=llama2-13b")
    assert run.calib.text == "wikitext2-train" and run.eval.spec.text == "wikitext2-test"
    assert run.model.max_length == 2048 and run.eval.spec.max_length == 2048


def test_sensitivity_defaults_follow_the_run():
    run = compose_config("sweep.low=3", "quant=hqq")
    assert run.sensitivity.settings["bits"] == 3
    assert [m.name for m in run.compare_metrics] == ["ldi", "zd", "position"]
    assert run.compare_metrics[0].settings == {"reduce": "token", "batch_size": 8}


def test_random_seeds_give_one_spec_per_seed():
    run = compose_config("metric=random", "metric.seeds=3", "metric.settings.seed=5")
    assert [m.settings["seed"] for m in run.metric.variants()] == [5, 6, 7]


# (overrides, phrase of the one-line message). Each is refused before any model, data or
# quantizer library loads; the ones after "--- needs the checkpoint's config" are refused
# after reading config.json, before the weights.
BAD_INPUT = [
    (["metric=nope"], "unknown metric 'nope'"),
    (["model=llama9"], "unknown model 'llama9'"),
    (["quant=gptqq"], "did you mean 'gptq'"),
    (["eval=ppx"], "unknown eval 'ppx'"),
    (["sweep.nope=1"], "unknown config key 'sweep.nope'"),
    (["command=plot"], "command=plot is not known"),
    (["device=cuda"], "no CUDA device is visible"),
    (["device=gpu"], "device=gpu is not a device"),
    (["model.dtype=float64"], "model.dtype=float64 is not known"),
    (["calib.text=ref-foo"], "calib.text=ref-foo is not a text source"),
    (["calib.text=file:/no/such/file.txt"], "no such file"),
    (["calib.samples=0"], "calib.samples=0 must be a positive integer"),
    (["calib.seq_len=1"], "calib.seq_len=1 leaves no next token"),
    (["sweep.low=1"], "cannot do 1 bits"),
    (["sweep.high=2", "sweep.low=4"], "sweep.low=4 is above sweep.high=2"),
    (["sweep.fractions=[1.5]"], "outside [0, 1]"),
    (["sweep.blocks=[-1]"], "numbers of low blocks are 0 or more"),
    (["metric.settings.reduce=max"], "token or sequence"),
    (["+metric.settings.nope=1"], "nope is not a setting of metric ldi"),
    (["metric=zd", "metric.settings.direction=up"], "direction must be one of"),
    (["+metric.seeds=2"], "metric ldi has no seed"),
    (["quant.settings.group_size=-1"], "group_size must be 0 (per channel) or positive"),
    (["+quant.settings.bits=4"], "bits is not a setting of quant=rtn"),
    (["eval.tasks=[boolq]"], "eval.source=local has no data for task 'boolq'"),
    (["eval.local={piqa: {file: /no/such.jsonl}}", "eval.tasks=[piqa]"], "not found"),
    (["eval.num_fewshot={piqa: -1}", "eval.tasks=[piqa]"], "must be 0 or more"),
    (["eval.kl=true", "eval=quick"], "needs a held-out text"),
    (["eval.limit=0"], "eval.limit=0 must be a positive integer"),
    (["budget=3.25", "budget_bytes=1000"], "not both"),
    (["budget=3.25", "allowed_bits=[1,2]"], "cannot do 1 bits"),
    (["budget=40"], "outside (0, 16]"),
    (["plan_file=/no/such/plan.yaml"], "plan file /no/such/plan.yaml not found"),
    (["compare_metrics=[ldi,foo]"], "compare_metrics names metric 'foo'"),
    (["tracking.name=mlflow"], "tracking=mlflow is not known"),
    (["baseline.name=drop"], "baseline=drop is not known"),
    (["paths.data=/no/such/dir", "eval=quick"], "data file /no/such/dir"),
    # --- needs the checkpoint's config (read before the weights)
    (["calib.seq_len=100000"], "calib.seq_len=100000 is longer than ref-tiny's context of 256"),
    (["eval.max_length=512"], "eval.max_length=512 is longer than ref-tiny's context of 256"),
    (["sweep.blocks=[13]"], "sweep.blocks has [13], outside 0..12"),
    (["quant=slider", "quant.settings.windows='0-3,5-11'"], "leave block 4 out"),
    (["quant=slider", "quant.settings.windows='0-5,3-2,4-11'"], "3-2 runs backwards"),
    (["quant=slider", "quant.settings.windows='0-5,4-12'"], "past the last (11)"),
    (["quant=slider", "quant.settings.stride=3"], "stride=3 is wider than the window (2)"),
    (["model.path=/no/such/model"], "does not exist and is not a hub id"),
]


# Let through by run.py's check before Hydra, refused by the command inside Hydra's main.
REFUSED_BY_THE_COMMAND = (["dry_run=true", "command=scores"], "scores has nothing to plan")
# One case per layer of checks runs `python run.py` itself; every case of BAD_INPUT runs
# run.py's own check (check_before_hydra) in process, without a Python start-up each.
THROUGH_RUN_PY = [
    (["metric=nope"], "unknown metric 'nope'"),  # composing the config (lwq.config)
    (["paths.data=/no/such/dir", "eval=quick"], "data file /no/such/dir"),  # check_inputs
    REFUSED_BY_THE_COMMAND,
]


def _cli(tmp_path: Path, *overrides: str) -> list[str]:
    """run.py's overrides for a bad input: results in tmp, the committed checkpoint."""
    results = f"paths.results={tmp_path / 'results'}"
    return ["tracking=none", results, f"model.path={REF_MODEL}", *overrides]


def _results_with_an_earlier_record(tmp_path: Path) -> Path:
    record = tmp_path / "results" / "ref-tiny" / "records.jsonl"
    record.parent.mkdir(parents=True)
    record.write_text('{"point_key": "earlier", "schema": 1}\n')
    return record


def _unchanged(tmp_path: Path, record: Path, hydra_logs: bool = False) -> bool:
    """The earlier record and nothing else (but Hydra's own logs, once Hydra has started)."""
    results = tmp_path / "results"
    paths = [p.relative_to(results) for p in results.rglob("*")]
    files = sorted(p.name for p in paths if p.parts[0] != "hydra")
    logs = (results / "hydra").exists()
    return (
        record.read_text() == '{"point_key": "earlier", "schema": 1}\n'
        and files == ["records.jsonl", "ref-tiny"]
        and logs == hydra_logs
    )


@pytest.mark.parametrize(
    ("overrides", "phrase"), BAD_INPUT, ids=[" ".join(o) for o, _ in BAD_INPUT]
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, overrides, phrase):
    record = _results_with_an_earlier_record(tmp_path)
    with pytest.raises(LwqError) as refused:
        run(compose_config(*_cli(tmp_path, *overrides)))
    assert phrase in str(refused.value) and "\n" not in str(refused.value)
    assert _unchanged(tmp_path, record)


@pytest.mark.parametrize(
    ("overrides", "phrase"), BAD_INPUT, ids=[" ".join(o) for o, _ in BAD_INPUT]
)
def test_run_py_refuses_bad_input_before_hydra_in_one_line_and_exit_2(
    tmp_path, capsys, overrides, phrase
):
    record = _results_with_an_earlier_record(tmp_path)
    assert phrase in refused_by_run_py(capsys, *_cli(tmp_path, *overrides))
    assert _unchanged(tmp_path, record)


def test_a_commands_own_check_refuses_what_run_py_lets_through(tmp_path, capsys):
    overrides, phrase = REFUSED_BY_THE_COMMAND
    record = _results_with_an_earlier_record(tmp_path)
    check_before_hydra(_cli(tmp_path, *overrides))  # passes: the command refuses it
    assert capsys.readouterr().err == ""
    with pytest.raises(LwqError, match=phrase):
        run(compose_config(*_cli(tmp_path, *overrides)))
    assert _unchanged(tmp_path, record)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "phrase"), THROUGH_RUN_PY, ids=[" ".join(o) for o, _ in THROUGH_RUN_PY]
)
def test_bad_input_on_the_command_line_is_one_line_and_exit_2(tmp_path, overrides, phrase):
    record = _results_with_an_earlier_record(tmp_path)
    proc = subprocess.run(
        [sys.executable, "run.py", *_cli(tmp_path, *overrides)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: ") and phrase in lines[0], lines[0]
    assert _unchanged(tmp_path, record, hydra_logs=overrides == REFUSED_BY_THE_COMMAND[0])


def test_a_plan_file_for_another_model_is_refused(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("bits: [4, 2, 4]\n")
    results = f"paths.results={tmp_path / 'results'}"
    config = compose_config(results, f"plan_file={plan}", "sweep.fractions=null", "sweep.blocks=[]")
    with pytest.raises(LwqError, match="plan_file has 3 blocks; ref-tiny has 12"):
        run(config)
