"""Any lm-eval task through config alone: a task of the user's own (YAML in
eval.include_path), local data for any of lm-eval's tasks (eval.local), few-shot counts,
lm-eval's names checked with a "did you mean", groups aggregated as lm-eval does."""

from __future__ import annotations

import json

import pytest
import yaml

from lwq.commands.sweep import run_sweep
from lwq.errors import LwqError
from lwq.evaluation.index import load_index
from lwq.evaluation.suite import EvalSpec, Suite
from lwq.evaluation.tasks import Group, check_task_names
from tests.conftest import compose_config, records, small_run_overrides
from tests.test_tasks import _loglikelihoods

QUESTIONS = [
    ("def f(x): return x + 1", "Is f a function?", 1),
    ("import os", "Does this line define a class?", 0),
    ("class A: pass", "Is A a class?", 1),
    ("x = [1, 2, 3]", "Is x a dictionary?", 0),
    ("for i in range(3): print(i)", "Is this a loop?", 1),
    ("return None", "Is this an import?", 0),
]


def _prompt(passage: str, question: str) -> str:
    return f"{passage}\nQuestion: {question}?\nAnswer:"


def _independent_accuracy(ref_model, items) -> float:
    """Accuracy counted here: the higher log-likelihood of " no" / " yes" after the prompt."""
    model, tokenizer = ref_model
    correct = 0
    for passage, question, label in items:
        lls = _loglikelihoods(model, tokenizer, _prompt(passage, question), [" no", " yes"])
        correct += lls.index(max(lls)) == label
    return correct / len(items)


def test_a_task_of_ones_own_runs_through_a_sweep_point(tmp_path, ref_model):
    """A yes/no task defined by two files in a temporary directory and config alone."""
    tasks_dir = tmp_path / "my_tasks"
    tasks_dir.mkdir()
    data = tmp_path / "yes_no.jsonl"
    data.write_text(
        "".join(
            json.dumps({"passage": p, "question": q, "label": lab}) + "\n"
            for p, q, lab in QUESTIONS
        )
    )
    (tasks_dir / "code_yes_no.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "code_yes_no",
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test",
                "output_type": "multiple_choice",
                "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:",
                "doc_to_choice": ["no", "yes"],
                "doc_to_target": "label",
                "metric_list": [{"metric": "acc"}],
                "metadata": {"version": 1.0},
            }
        )
    )
    overrides = [
        *small_run_overrides(tmp_path),
        "eval.text=null",
        "eval.tasks=[code_yes_no]",
        f"eval.include_path={tasks_dir}",
        "eval.kl=false",
        "sweep.high=16",  # the point is the model as loaded: the count below applies
        "sweep.fractions=[0]",
        "sweep.reference=false",
    ]
    run_sweep(compose_config(*overrides))
    (record,) = records(tmp_path)
    assert record["eval"]["tasks"]["code_yes_no"]["acc"] == pytest.approx(
        _independent_accuracy(ref_model, QUESTIONS)
    )
    assert record["eval_provenance"]["task_versions"]["code_yes_no"] == 1.0
    assert record["eval_provenance"]["num_fewshot"]["code_yes_no"] == 0


def test_local_data_for_one_of_lm_evals_tasks_with_a_field_mapping(tmp_path, ref_model):
    """BoolQ's own prompt and metric (lm-eval's YAML) on a local file whose fields are named
    differently: `eval.local.boolq: {file, fields}` maps them."""
    data = tmp_path / "my boolq.jsonl"  # a space in the path, too
    data.write_text(
        "".join(json.dumps({"text": p, "q": q, "answer": lab}) + "\n" for p, q, lab in QUESTIONS)
    )
    local = {
        "boolq": {
            "file": str(data),
            "fields": {"passage": "text", "question": "q", "label": "answer"},
        }
    }
    spec = EvalSpec("mine", None, 4000, None, 0, 256, tasks=("boolq",), local=local)
    check_task_names(spec.tasks, source="local", local=local, include_path=None, index=load_index)
    suite = Suite(spec, data_dir=tmp_path, workdir=tmp_path / "suite", batch_size=4).prepare()
    result = suite.evaluate(*ref_model)
    assert result["tasks"]["boolq"]["acc"] == pytest.approx(
        _independent_accuracy(ref_model, QUESTIONS)
    )
    assert suite.data_files() == [data]  # hashed into the records
    assert "local" in spec.identity() and "local" not in EvalSpec("a", "x", 1, 1, 0, 8).identity()


@pytest.mark.slow  # builds lm-eval's task index once per machine (~10-30 s)
def test_names_are_checked_against_lm_evals_index():
    def check(names, source="hub", local=None):
        check_task_names(
            names, source=source, local=local or {}, include_path=None, index=load_index
        )

    check(("boolq", "mmlu", "gsm8k", "ai2_arc"))  # tasks, groups and tags of lm-eval
    with pytest.raises(LwqError, match="unknown eval task 'boolqq' \\(did you mean 'boolq'\\?\\)"):
        check(("boolqq",))
    with pytest.raises(LwqError, match="no data for task 'boolq'.*eval.local.boolq="):
        check(("boolq",), source="local")
    check(("ai2_arc",), source="local")  # a tag of two tasks that have local converters
    index = load_index()
    assert index.leaves("ai2_arc") == ["arc_challenge", "arc_easy"]
    assert len(index.leaves("mmlu")) == 57 and index.get("mmlu").aggregate == ("acc",)


def test_few_shot_counts_are_config_and_recorded(tmp_path, data_dir, ref_model):
    def run(fewshot):
        task = "lambada_openai"  # a perplexity: any change of the prompt shows
        spec = EvalSpec("f", None, 4000, 10, 0, 256, tasks=(task,), num_fewshot=fewshot)
        suite = Suite(
            spec, data_dir=data_dir, workdir=tmp_path / str(fewshot), batch_size=8
        ).prepare()
        return suite.provenance()["num_fewshot"][task], suite.evaluate(*ref_model)["tasks"][task]

    (zero, plain), (one, shown) = run({}), run({"lambada_openai": 1})
    assert (zero, one) == (0, 1)
    assert plain["perplexity"] != pytest.approx(shown["perplexity"], rel=1e-3)  # other prompts


def test_a_group_is_aggregated_by_size_with_lm_evals_function(tmp_path, data_dir, ref_model):
    from lwq.evaluation.index import Entry

    spec = EvalSpec(
        "g",
        None,
        4000,
        None,
        0,
        256,
        tasks=("arc_easy", "piqa"),
        limits={"arc_easy": 10, "piqa": 30},
    )
    suite = Suite(spec, data_dir=data_dir, workdir=tmp_path, batch_size=8).prepare()
    entry = Entry("both", "group", children=("arc_easy", "piqa"), aggregate=("acc",))
    suite.requested.groups["both"] = Group(entry, ("arc_easy", "piqa"))
    tasks = suite.evaluate(*ref_model)["tasks"]
    expected = (10 * tasks["arc_easy"]["acc"] + 30 * tasks["piqa"]["acc"]) / 40
    assert tasks["both"]["acc"] == pytest.approx(expected)
    assert 0 < tasks["both"]["acc_stderr"] < 1
