"""Tracking mirrors the records: one wandb run per sweep, one logged step per point."""

import os

import pytest

from lwq.commands import record_fields
from lwq.commands.sweep import run_sweep
from lwq.results.tracking import WandbTracker
from tests.conftest import compose_config, small_run_overrides


class RecordingTracker:
    def __init__(self):
        self.steps, self.finished = [], False

    def log(self, step, values):
        self.steps.append((step, values))

    def finish(self):
        self.finished = True


@pytest.mark.slow
def test_one_step_per_evaluated_point(tmp_path, monkeypatch):
    tracker = RecordingTracker()
    monkeypatch.setattr(record_fields, "make_tracker", lambda kind, **settings: tracker)
    cfg = compose_config(*small_run_overrides(tmp_path), "sweep.fractions=[0,1]")
    written = run_sweep(cfg)
    assert [s for s, _ in tracker.steps] == list(range(len(written))) == [0, 1, 2]
    assert [v["k"] for _, v in tracker.steps] == [-1, 0, 12]
    first = written[1]["eval"]["cross_check"]["token_perplexity"]
    assert tracker.steps[1][1]["cross_check/token_perplexity"] == first
    assert tracker.finished


class FakeRun:
    def __init__(self, **init):
        self.init, self.logged, self.finished = init, [], False

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


def test_wandb_tracker_hands_wandb_the_run_and_every_step(tmp_path, monkeypatch):
    """What lwq gives wandb (wandb itself is not under test): one run with the resolved
    config under the results dir, offline unless WANDB_MODE says otherwise, each step."""
    import wandb

    runs = []
    monkeypatch.setattr(wandb, "init", lambda **init: runs.append(FakeRun(**init)) or runs[-1])
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tracker = WandbTracker(project="lwq", name="t", config={"a": 1}, mode="offline", dir=tmp_path)
    tracker.log(0, {"x": 1.0})
    tracker.log(1, {"x": 2.0, "k": 3})
    tracker.finish()
    (run,) = runs
    assert run.init == {"project": "lwq", "name": "t", "config": {"a": 1}, "dir": str(tmp_path)}
    assert run.logged == [(0, {"x": 1.0}), (1, {"x": 2.0, "k": 3})] and run.finished
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")  # the environment wins over the config
    WandbTracker(project="lwq", name="u", config={}, mode="offline", dir=tmp_path)
    assert os.environ["WANDB_MODE"] == "online"
