"""`file:` text sources work for any path (absolute, relative, with spaces), for
calibration and held-out text, with a safe task name and the path kept in the record."""

from __future__ import annotations

import pytest

from lwq.config import compose_run
from lwq.data import check_text_source, load_texts
from lwq.errors import LwqError
from lwq.evaluation.suite import EvalSpec, Suite, text_task_name
from tests.conftest import REF_MODEL

TEXT = "def add(a, b):\n    return a + b\n\n" * 40


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """{kind: file: source} for one text written at an absolute, a relative and a spaced path."""
    (tmp_path / "dir with spaces").mkdir()
    for name in ("abs.txt", "rel.txt", "dir with spaces/a b.txt"):
        (tmp_path / name).write_text(TEXT, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return {
        "absolute": f"file:{tmp_path / 'abs.txt'}",
        "relative": "file:rel.txt",
        "spaces": f"file:{tmp_path / 'dir with spaces' / 'a b.txt'}",
    }


@pytest.mark.parametrize("kind", ["absolute", "relative", "spaces"])
def test_a_file_source_is_read_and_named_safely(sources, tmp_path, kind, ref_model):
    source = sources[kind]
    check_text_source(source, "eval.text")
    assert load_texts(source, tmp_path) == [TEXT]
    run = compose_run(
        f"model.path={REF_MODEL}",
        f"eval.text={source}",
        f"calib.text={source}",
        "eval.limit=2",
        "eval.chunk_chars=400",
    )  # composes and passes every check, calibration included
    assert run.calib.text == source
    suite = Suite(
        run.eval.spec, data_dir=tmp_path, workdir=tmp_path / "tasks", batch_size=2
    ).prepare()
    assert suite.task_name == text_task_name("ppl", source)
    assert suite.task_name.startswith("lwq_ppl_file_") and " " not in suite.task_name
    assert suite.provenance()["text"] == source  # the path stays in the record
    result = suite.evaluate(*ref_model, reference_point=True)
    metrics = result["tasks"][suite.task_name]
    assert metrics["token_perplexity"] == pytest.approx(
        result["cross_check"]["token_perplexity"], rel=1e-4
    )
    assert result["cross_check"]["agrees"]


def test_two_paths_get_two_task_names_and_a_missing_file_is_refused(tmp_path):
    assert text_task_name("ppl", "file:/a/x.txt") != text_task_name("ppl", "file:/b/x.txt")
    with pytest.raises(LwqError, match="no such file"):
        check_text_source(f"file:{tmp_path / 'missing.txt'}", "eval.text")


def test_a_suite_without_text_has_no_kl_or_cross_check(tmp_path, data_dir):
    spec = EvalSpec("q", None, 4000, 3, 0, 128, tasks=("piqa",))
    suite = Suite(spec, data_dir=data_dir, workdir=tmp_path, batch_size=2, kl_top_k=16).prepare()
    assert suite.kl_top_k is None and suite.cross_check == "none"
