import pytest

from lwq.errors import LwqError
from lwq.metrics import Scores
from lwq.metrics.cache import _path, cached_scores
from lwq.results.keys import score_key

MODEL = {"name": "m", "path": "p", "revision": None, "dtype": "auto"}


def test_scores_are_computed_once_and_aliases_share_the_entry(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return Scores((0.1, 0.3))

    key = score_key(MODEL, "ldi", {"reduce": "token"}, {"samples": 4}, None)
    assert cached_scores(tmp_path, key, compute) == (Scores((0.1, 0.3)), False)
    alias = score_key(MODEL, "lim", {"reduce": "token"}, {"samples": 4}, None)
    assert cached_scores(tmp_path, alias, compute) == (Scores((0.1, 0.3)), True)
    other = score_key(MODEL, "ldi", {"reduce": "sequence"}, {"samples": 4}, None)
    cached_scores(tmp_path, other, compute)
    assert len(calls) == 2


def test_data_free_metrics_ignore_the_calibration_settings():
    assert score_key(MODEL, "zd", {}, {"samples": 4}, None) == score_key(
        MODEL, "zd", {}, {"samples": 8}, None
    )


def test_a_corrupt_cache_file_is_an_error_naming_it(tmp_path):
    key = score_key(MODEL, "zd", {}, None, None)
    cached_scores(tmp_path, key, lambda: Scores((1.0,)))
    _path(tmp_path, key).write_text("{oops")
    with pytest.raises(LwqError, match="corrupt.*delete it"):
        cached_scores(tmp_path, key, lambda: Scores((1.0,)))
