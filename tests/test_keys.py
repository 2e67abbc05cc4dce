"""Point keys are stable: the default sweep's keys are those its records had before the run
layer was rewritten (so existing results/ resume), and each key moves with what it hashes."""

from __future__ import annotations

from lwq.metrics import Scores
from lwq.metrics.cache import store
from lwq.quant import make_backend
from lwq.results import keys
from tests.conftest import compose_config

# From results/ref-tiny/records.jsonl and results/cache/scores/ of `python run.py` at commit
# 91d735d (before lwq.config existed): a change here orphans every existing record.
DEFAULT_REFERENCE_KEY = "reference-95797ed1228663e3892b"
DEFAULT_LDI_SWEEP_ID = "b3f7a24d9eaf95a9ce18"
DEFAULT_LDI_CACHE_FILE = "ldi-ae4f8ca24f537bc0.json"


def _default_keys(*overrides: str) -> tuple[str, dict, str]:
    run = compose_config(*overrides)
    model, calib, evaluation = run.model.identity(), run.calib.identity(), run.eval.spec.identity()
    backend = make_backend(run.quant.name, **run.quant.settings)
    quant = keys.quant_identity(backend.name, backend.settings(), None)
    metric = run.metric
    score = keys.score_key(model, metric.name, metric.settings, calib, run.quant.as_config())
    sweep = keys.sweep_id(
        model=model,
        evaluation=evaluation,
        scores=score,
        reverse=metric.reverse,
        quant=quant,
        high=run.sweep.high,
        low=run.sweep.low,
        baseline=run.baseline,
    )
    return keys.reference_key(model, evaluation), score, sweep


def test_the_default_sweeps_keys_are_the_ones_its_records_have(tmp_path):
    reference, score, sweep = _default_keys()
    assert reference == DEFAULT_REFERENCE_KEY
    assert sweep == DEFAULT_LDI_SWEEP_ID
    assert keys.point_key(sweep, 5) == f"{DEFAULT_LDI_SWEEP_ID}-k5"
    assert store(tmp_path, score, Scores((0.0,))).name == DEFAULT_LDI_CACHE_FILE


def test_lim_shares_ldis_keys_and_other_settings_do_not():
    assert _default_keys("metric=lim")[2] == DEFAULT_LDI_SWEEP_ID
    assert _default_keys("metric.reverse=true")[2] != DEFAULT_LDI_SWEEP_ID
    assert _default_keys("sweep.low=3")[2] != DEFAULT_LDI_SWEEP_ID
    assert _default_keys("calib.samples=8")[2] != DEFAULT_LDI_SWEEP_ID
    assert _default_keys("eval.limit=8")[0] != DEFAULT_REFERENCE_KEY
    assert _default_keys("eval.batch_size=4")[0] == DEFAULT_REFERENCE_KEY  # speed only


def test_a_quantizing_metric_depends_on_the_backend_and_a_data_free_one_on_no_calibration():
    model = {"name": "m"}
    sensitivity = keys.score_key(model, "sensitivity", {"bits": 2}, {"samples": 4}, {"name": "a"})
    other = keys.score_key(model, "sensitivity", {"bits": 2}, {"samples": 4}, {"name": "b"})
    assert sensitivity["settings"]["quant"] == {"name": "a"} and sensitivity != other
    zd = keys.score_key(model, "zd", {}, {"samples": 4}, {"name": "a"})
    assert zd["calibration"] is None and "quant" not in zd["settings"]
