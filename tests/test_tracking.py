"""Tracking mirrors the records: one wandb run per sweep, one logged step per point."""

import lwq.session
import lwq.sweep
from lwq.tracking import WandbTracker
from tests.conftest import compose_config, small_run_overrides


class RecordingTracker:
    def __init__(self):
        self.steps, self.finished = [], False

    def log(self, step, values):
        self.steps.append((step, values))

    def finish(self):
        self.finished = True


def test_one_step_per_evaluated_point(tmp_path, monkeypatch):
    tracker = RecordingTracker()
    monkeypatch.setattr(lwq.session, "make_tracker", lambda kind, **settings: tracker)
    cfg = compose_config(*small_run_overrides(tmp_path), "sweep.fractions=[0,1]")
    written = lwq.sweep.run_sweep(cfg)
    assert [s for s, _ in tracker.steps] == list(range(len(written))) == [0, 1, 2]
    assert [v["k"] for _, v in tracker.steps] == [-1, 0, 12]
    first = written[1]["eval"]["cross_check"]["token_perplexity"]
    assert tracker.steps[1][1]["cross_check/token_perplexity"] == first
    assert tracker.finished


def test_wandb_offline_writes_a_local_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = WandbTracker(
        project="lwq-test", name="t", config={"a": 1}, mode="offline", dir=tmp_path
    )
    tracker.log(0, {"x": 1.0})
    tracker.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
