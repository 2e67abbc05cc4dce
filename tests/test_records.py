import json

import pytest

from lwq.errors import LwqError
from lwq.results.store import RecordStore


def test_append_then_read_back(tmp_path):
    store = RecordStore(tmp_path / "m" / "records.jsonl")
    store.append({"point_key": "a", "x": 1})
    store.append({"point_key": "b", "x": 2})
    assert [r["x"] for r in store.read()] == [1, 2]
    assert store.done_keys() == {"a", "b"}


def test_a_torn_write_loses_only_that_record(tmp_path):
    path = tmp_path / "records.jsonl"
    store = RecordStore(path)
    store.append({"point_key": "a"})
    with open(path, "a") as f:
        f.write('{"point_key": "b", "eval": {"ta')  # killed mid-write
    store.append({"point_key": "c"})
    with pytest.warns(UserWarning, match="torn record"):
        assert store.done_keys() == {"a", "c"}
    assert path.read_text().count("\n") == 3


def test_a_corrupt_line_is_refused_and_named(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps({"point_key": "a"}) + "\n" + "{not json}\n")
    with pytest.raises(LwqError, match="records.jsonl:2"):
        RecordStore(path).read()
    assert "point_key" in path.read_text()  # nothing was deleted
