"""The record store: every record is whole or absent, whatever cut a write short, and
processes appending at once never lose or interleave records."""

import json
import multiprocessing

import pytest

from lwq.results.store import RecordStore, checksum


def _record(key: str, **extra) -> dict:
    return {
        "point_key": key,
        "eval": {"tasks": {"t": {"ppl": 1.5, "nested": {"a": [1, 2]}}}},
    } | extra


def test_append_then_read_back(tmp_path):
    store = RecordStore(tmp_path / "m" / "records.jsonl")
    store.append(_record("a", x=1))
    store.append(_record("b", x=2))
    assert [r["x"] for r in store.read()] == [1, 2]
    assert store.done_keys() == {"a", "b"}
    line = json.loads(store.path.read_text().splitlines()[0])
    assert line["checksum"] == checksum(line) and line["schema"] == 2


def test_a_record_cut_at_any_byte_is_never_used_and_the_rest_is(tmp_path, capsys):
    """Cut the last line at every byte offset (inside nested objects too): the earlier
    records stay, the cut one is reported by line number and not done, and a record
    appended after the cut is read back whole."""
    path = tmp_path / "records.jsonl"
    store = RecordStore(path)
    store.append(_record("a"))
    store.append(_record("b"))
    whole = path.read_bytes()
    start = whole.rindex(b"\n", 0, len(whole) - 1) + 1  # the last line
    nested = whole.index(b'"nested"', start)
    assert start < nested < len(whole) - 1
    for cut in range(start, len(whole) - 1):  # every prefix of the last line but the whole
        path.write_bytes(whole[:cut])
        result = store.scan()
        assert [r["point_key"] for r in result.records] == ["a"], cut
        assert result.damaged == ([] if cut == start else [2]), cut
        assert store.done_keys() == {"a"}, cut
    path.write_bytes(whole[: nested + 3])  # in the middle of a nested object
    store.append(_record("c"))
    assert [r["point_key"] for r in store.read()] == ["a", "c"]
    assert f"{path}:2 is a damaged record" in capsys.readouterr().err


def test_a_line_whose_bytes_changed_is_not_used(tmp_path):
    path = tmp_path / "records.jsonl"
    store = RecordStore(path)
    store.append(_record("a", value=0.25))
    store.append(_record("b", value=0.5))
    path.write_text(path.read_text().replace("0.25", "0.26"))  # valid JSON, wrong numbers
    assert store.done_keys() == {"b"} and store.scan().damaged == [1]


def test_records_written_before_checksums_are_read(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(_record("old", schema=1)) + "\n")
    store = RecordStore(path)
    store.append(_record("new"))
    assert [r["point_key"] for r in store.read()] == ["old", "new"]


def test_failed_points_are_kept_but_not_done(tmp_path):
    store = RecordStore(tmp_path / "records.jsonl")
    store.append(_record("a", status="failed", error="RuntimeError: CUDA out of memory"))
    store.append(_record("b"))
    assert store.done_keys() == {"b"} and len(store.read()) == 2


def _append_many(path, worker: int, count: int) -> None:
    store = RecordStore(path)
    for i in range(count):
        store.append(_record(f"w{worker}-{i}", padding="x" * 5000))  # larger than a pipe buffer


def test_processes_appending_at_once_lose_and_interleave_nothing(tmp_path):
    path = tmp_path / "records.jsonl"
    workers = [
        multiprocessing.get_context("fork").Process(target=_append_many, args=(path, w, 25))
        for w in range(4)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0
    result = RecordStore(path).scan()
    assert result.damaged == []
    assert sorted(r["point_key"] for r in result.records) == sorted(
        f"w{w}-{i}" for w in range(4) for i in range(25)
    )


@pytest.mark.parametrize("junk", [b"{not json}\n", b"[1, 2]\n", b"\xff\xfe\n"])
def test_junk_lines_are_reported_not_fatal(tmp_path, junk):
    path = tmp_path / "records.jsonl"
    store = RecordStore(path)
    store.append(_record("a"))
    with open(path, "ab") as f:
        f.write(junk)
    store.append(_record("b"))
    assert store.done_keys() == {"a", "b"} and store.scan().damaged == [2]
