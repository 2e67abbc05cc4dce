"""Text sources and calibration windows: real data, fixed order, clear errors."""

import pytest
import torch

from lwq.data import calibration_ids, chunk_documents, load_texts, seeded_subset
from lwq.errors import LwqError
from lwq.reference.corpus import load_split, split_of


def test_wikitext_test_file_splits_into_articles(data_dir):
    articles = load_texts("wikitext2-test", data_dir)
    assert articles[0].startswith(" = Robert Boulter = \n")
    assert len(articles) > 50
    assert "".join(articles) == (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text()


def test_wikitext_calibration_and_heldout_articles_never_overlap(data_dir):
    articles = load_texts("wikitext2-test", data_dir)
    calib = load_texts("wikitext2-test-calib", data_dir)
    heldout = load_texts("wikitext2-test-heldout", data_dir)
    assert not set(calib) & set(heldout)
    assert sorted(calib + heldout) == sorted(articles)
    assert len(calib) == len(articles) // 4
    assert heldout == [a for a in articles if a not in set(calib)]  # the file's order kept
    assert calib == load_texts("wikitext2-test-calib", data_dir)  # the same split every run


def test_missing_data_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(LwqError, match=f"{tmp_path}.*LWQ_DATA"):
        load_texts("wikitext2-test", tmp_path)
    with pytest.raises(LwqError, match="unknown text source"):
        load_texts("wikitext-103", tmp_path)


def test_a_split_is_read_once_a_process_and_each_caller_gets_its_own_list(tmp_path):
    names = [f"m{i}.py" for i in range(200)]
    for name in names:
        (tmp_path / name).write_text(f"x = {name!r}\n")
    heldout = sorted(n for n in names if split_of(n) == "heldout")
    first = load_split("heldout", tmp_path)
    assert [d.name for d in first] == heldout
    (tmp_path / heldout[0]).write_text("changed = 1\n")  # not seen: the split was read
    first.clear()
    again = load_split("heldout", tmp_path)
    assert [d.name for d in again] == heldout and "changed" not in again[0].text


def test_reference_splits_are_disjoint_and_leave_out_generated_tables():
    names = {s: {d.name for d in load_split(s)} for s in ("train", "calib", "heldout")}
    assert not (names["train"] & names["heldout"]) and not (names["calib"] & names["heldout"])
    everything = set().union(*names.values())
    assert not any(n.startswith("encodings/") or "/test/" in f"/{n}" for n in everything)
    assert all(split_of(n) == "heldout" for n in names["heldout"])
    assert len(names["heldout"]) >= 20


def test_chunks_and_subsets_are_deterministic():
    texts = ["a\n" * 50, "b\n" * 10]
    chunks = chunk_documents(texts, 20)
    assert all(len(c) <= 20 for c in chunks) and "".join(chunks) == "".join(texts)
    assert seeded_subset(chunks, 3, seed=1) == seeded_subset(chunks, 3, seed=1)
    assert seeded_subset(chunks, 3, seed=1) != seeded_subset(chunks, 3, seed=2)


def test_calibration_windows_are_seeded_and_sized(ref_model):
    _, tokenizer = ref_model
    texts = [d.text for d in load_split("calib")]
    a = calibration_ids(texts, tokenizer, samples=4, seq_len=32, seed=0)
    b = calibration_ids(texts, tokenizer, samples=4, seq_len=32, seed=0)
    assert a.shape == (4, 32) and torch.equal(a, b)
    with pytest.raises(LwqError, match="calib.seq_len"):
        calibration_ids(["tiny"], tokenizer, samples=1, seq_len=64, seed=0)
