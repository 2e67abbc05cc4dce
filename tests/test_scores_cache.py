import re

import pytest

from lwq.errors import LwqError
from lwq.metrics import Scores
from lwq.metrics.cache import load_cached, store
from lwq.results.keys import score_key

MODEL = {"name": "m", "path": "p", "revision": None, "dtype": "auto"}


def test_stored_scores_load_back_and_aliases_share_the_entry(tmp_path):
    key = score_key(MODEL, "ldi", {"reduce": "token"}, {"samples": 4}, None)
    assert load_cached(tmp_path, key) is None
    scores = Scores((0.1, 0.3), higher_is_important=False, details={"kl@2": (0.5, 0.25)})
    store(tmp_path, key, scores)
    loaded = load_cached(tmp_path, key)
    assert loaded == scores and loaded.details == scores.details
    alias = score_key(MODEL, "lim", {"reduce": "token"}, {"samples": 4}, None)
    assert load_cached(tmp_path, alias) == scores
    other = score_key(MODEL, "ldi", {"reduce": "sequence"}, {"samples": 4}, None)
    assert load_cached(tmp_path, other) is None


def test_data_free_metrics_ignore_the_calibration_settings():
    assert score_key(MODEL, "zd", {}, {"samples": 4}, None) == score_key(
        MODEL, "zd", {}, {"samples": 8}, None
    )


def test_a_corrupt_cache_file_is_an_error_naming_it(tmp_path):
    key = score_key(MODEL, "zd", {}, None, None)
    path = store(tmp_path, key, Scores((1.0,)))
    path.write_text("{oops")
    with pytest.raises(LwqError, match=f"{re.escape(str(path))} is corrupt.*delete it"):
        load_cached(tmp_path, key)
