"""lm-eval benchmarks on local data: hub schema, sane numbers, an independent count, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from lwq.data import seeded_subset
from lwq.errors import LwqError
from lwq.evaluation.harness import Harness, task_config
from lwq.evaluation.local_data import read_local
from lwq.evaluation.suite import EvalSpec, Suite
from lwq.evaluation.tasks import BENCHMARKS, benchmark_task
from tests.conftest import REF_MODEL, refused_by_run_py

LIMIT = 30  # items per task: at chance, P(acc == 0) on 4 choices is 0.75**30 ~ 2e-4
LIMITS = {"wikitext": 1, "hellaswag": 24}  # a whole article; 4 long endings per item
ACCURACY_TASKS = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande"]
MAX_LENGTH = 256


def spec(**overrides) -> EvalSpec:
    fields = dict(name="t", text=None, chunk_chars=4000, limit=LIMIT, seed=0, max_length=256)
    return EvalSpec(**(fields | overrides))


@pytest.fixture(scope="module")
def suite(data_dir, tmp_path_factory):
    every = tuple(BENCHMARKS.names())
    return Suite(
        spec(tasks=every, limits=LIMITS),
        data_dir=data_dir,
        workdir=tmp_path_factory.mktemp("tasks"),
        batch_size=8,
        cross_check="all",  # no text: nothing to cross-check, so it is off
    ).prepare()


@pytest.fixture(scope="module")
def result(suite, ref_model):
    model, tokenizer = ref_model
    return suite.evaluate(model, tokenizer)


def test_local_files_read_in_the_hub_schema(data_dir):
    sizes = {"arc_easy": 2376, "arc_challenge": 1172, "hellaswag": 10042, "piqa": 1838}
    sizes |= {"winogrande": 1267, "lambada_openai": 5153}
    for name, n in sizes.items():
        assert len(read_local(name, data_dir)) == n, name
    arc = read_local("arc_challenge", data_dir)
    assert all(d["answerKey"] in d["choices"]["label"] for d in arc)
    assert {len(d["choices"]["text"]) for d in arc} == {3, 4, 5}
    hella = read_local("hellaswag", data_dir)
    assert {d["label"] for d in hella} == {"0", "1", "2", "3"}
    assert all(len(d["endings"]) == 4 and d["activity_label"] for d in hella)
    assert {d["label"] for d in read_local("piqa", data_dir)} == {0, 1}
    assert {d["answer"] for d in read_local("winogrande", data_dir)} == {"1", "2"}
    pages = read_local("wikitext", data_dir)
    raw = (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    assert "".join(p["page"] for p in pages) == raw and pages[0]["page"].startswith(" = Robert")


def test_subsets_are_seeded_and_the_same_at_every_build(data_dir):
    def docs(seed):
        task = benchmark_task("piqa", source="local", data_dir=data_dir, limit=5, seed=seed)
        return task.docs

    assert docs(0) == docs(0) and len(docs(0)) == 5
    assert docs(0) != docs(1)


@pytest.mark.slow
def test_every_local_task_gives_sane_numbers(result, suite):
    tasks = result["tasks"]
    assert set(tasks) == set(BENCHMARKS.names())
    for name in ACCURACY_TASKS:
        for metric, value in tasks[name].items():
            if metric.startswith("acc"):
                assert math.isfinite(value), (name, metric)
            if metric in ("acc", "acc_norm"):
                assert 0 < value < 1, (name, metric, value)  # near chance, never 0 or 1
                assert 0 < tasks[name][f"{metric}_stderr"] < 0.5, (name, metric)
    assert set(tasks["winogrande"]) == {"acc", "acc_stderr"}  # lm-eval reports acc only
    # A Python-code model almost never guesses LAMBADA's last word: acc may be 0.
    assert 0 <= tasks["lambada_openai"]["acc"] < 1
    assert math.isfinite(tasks["lambada_openai"]["perplexity"])
    assert tasks["lambada_openai"]["perplexity"] > 1
    wiki = tasks["wikitext"]
    assert set(wiki) == {"word_perplexity", "byte_perplexity", "bits_per_byte"}
    assert wiki["byte_perplexity"] == pytest.approx(2 ** wiki["bits_per_byte"], rel=1e-9)
    assert all(math.isfinite(v) and v > 1 for v in wiki.values())
    assert result["cross_check"] is None


@pytest.mark.slow
def test_average_is_the_mean_over_the_accuracy_tasks(result):
    tasks, average = result["tasks"], result["average"]
    acc_tasks = [*ACCURACY_TASKS, "lambada_openai"]
    assert average["acc"] == pytest.approx(sum(tasks[t]["acc"] for t in acc_tasks) / 6)
    norm_tasks = ["arc_easy", "arc_challenge", "hellaswag", "piqa"]
    assert average["acc_norm"] == pytest.approx(sum(tasks[t]["acc_norm"] for t in norm_tasks) / 4)


@pytest.mark.slow
def test_provenance_names_versions_and_items(suite, result):
    provenance = suite.provenance()
    assert provenance["lm_eval_version"] == "0.4.13" and provenance["source"] == "local"
    assert provenance["task_versions"]["wikitext"] == 2.0
    assert provenance["task_versions"]["arc_easy"] == 1.0
    expected = {name: LIMITS.get(name, LIMIT) for name in BENCHMARKS.names()}
    assert provenance["items"] == expected
    json.dumps(provenance)


@pytest.mark.slow
def test_reused_tasks_give_simple_evaluates_numbers(suite, result, ref_model):
    """Requests rendered once and reused == lm-eval's own simple_evaluate on fresh tasks."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = ref_model
    names = ["arc_easy", "lambada_openai"]  # multiple choice; loglikelihood + bootstrap
    out = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, max_length=MAX_LENGTH),
        tasks=names,
        task_manager=TaskManager(include_path=str(suite.harness.workdir), include_defaults=False),
        bootstrap_iters=suite.spec.bootstrap_iters,
        log_samples=False,
    )
    expected_metrics = {"arc_easy": ("acc", "acc_norm"), "lambada_openai": ("acc", "perplexity")}
    for name, metrics in expected_metrics.items():
        theirs = out["results"][name]
        for metric in metrics:
            assert result["tasks"][name][metric] == pytest.approx(
                theirs[f"{metric},none"], rel=1e-6
            ), (name, metric)


def _independent_items(name: str, data_dir) -> list[tuple[str, list[str], int]]:
    """(context, choices, gold) straight from the raw local files, lm-eval's prompt format."""
    if name == "arc_easy":
        rows = _jsonl(data_dir / "arc" / "ARC-Easy-Test.jsonl")
        items = []
        for row in rows:
            choices = row["question"]["choices"]
            gold = [c["label"] for c in choices].index(row["answerKey"])
            stem = row["question"]["stem"]
            items.append((f"Question: {stem}\nAnswer:", [c["text"] for c in choices], gold))
    else:
        rows = _jsonl(data_dir / "piqa" / "valid.jsonl")
        labels = (data_dir / "piqa" / "valid-labels.lst").read_text().split()
        items = [
            (f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(label))
            for r, label in zip(rows, labels, strict=True)
        ]
    return seeded_subset(items, LIMIT, seed=0)


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@torch.no_grad()
def _loglikelihoods(model, tokenizer, context: str, continuations: list[str]) -> list[float]:
    """Summed log-probability of each continuation after `context`: one right-padded batch
    (causal attention: padding after a sequence cannot change its logits)."""
    n_context = len(tokenizer(context)["input_ids"])
    rows = []
    for continuation in continuations:
        whole = tokenizer(context + continuation)["input_ids"]
        rows.append((whole[-(MAX_LENGTH + 1) :][:-1], whole[n_context:]))
    width = max(len(inputs) for inputs, _ in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for row, (inputs, _) in enumerate(rows):
        ids[row, : len(inputs)], mask[row, : len(inputs)] = torch.tensor(inputs), 1
    logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.double(), -1)
    sums = []
    for row, (inputs, targets) in enumerate(rows):
        scored = logprobs[row, len(inputs) - len(targets) : len(inputs)]  # (T, V)
        sums.append(scored[torch.arange(len(targets)), torch.tensor(targets)].sum().item())
    return sums


@pytest.mark.slow
@pytest.mark.parametrize("name", ["arc_easy", "piqa"])
def test_accuracy_agrees_with_an_independent_count(name, result, ref_model, data_dir):
    model, tokenizer = ref_model
    correct = correct_norm = 0
    for context, choices, gold in _independent_items(name, data_dir):
        lls = _loglikelihoods(model, tokenizer, context, [" " + c for c in choices])
        per_char = [ll / len(c) for ll, c in zip(lls, choices, strict=True)]
        correct += lls.index(max(lls)) == gold  # first maximum, as np.argmax
        correct_norm += per_char.index(max(per_char)) == gold
    assert round(result["tasks"][name]["acc"] * LIMIT) == correct
    assert round(result["tasks"][name]["acc_norm"] * LIMIT) == correct_norm


def test_bad_sources_and_stray_settings_are_one_line():
    from tests.conftest import compose_config

    with pytest.raises(LwqError, match="eval.source"):
        compose_config("eval.tasks=[piqa]", "eval.source=s3")
    # a preset's limits for tasks not swept are dropped (eval=quick eval.tasks=[piqa] works)
    assert spec(tasks=("piqa",), limits={"arc_easy": 3, "piqa": 5}).limits == {"piqa": 5}
    with pytest.raises(LwqError, match="eval.num_fewshot names"):
        compose_config("eval=quick", "eval.tasks=[piqa]", "eval.num_fewshot={arc_easy: 3}")
    with pytest.raises(LwqError, match="neither a text nor tasks"):
        compose_config("eval.text=null")


def test_unknown_task_from_the_command_line(tmp_path, capsys):
    tasks = ["eval=quick", "eval.tasks=[piqa,hellaswga]"]
    run = [f"model.path={REF_MODEL}", "tracking=none", f"paths.results={tmp_path}"]
    line = refused_by_run_py(capsys, *tasks, *run)
    assert "unknown eval task 'hellaswga' (did you mean 'hellaswag'?)" in line


@pytest.mark.parametrize("name", sorted(BENCHMARKS.names()))
def test_missing_local_data_names_the_path_and_the_fix(name, tmp_path):
    with pytest.raises(LwqError, match=f"{tmp_path}.*paths.data=<dir>.*LWQ_DATA"):
        benchmark_task(name, source="local", data_dir=tmp_path, limit=3, seed=0)


@pytest.mark.parametrize("name", sorted(BENCHMARKS.names()))
def test_hub_tasks_are_lm_evals_own(name, tmp_path):
    """Hub source: lm-eval's YAML unchanged but for the name (no network touched here)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    task = benchmark_task(name, source="hub", data_dir=tmp_path, limit=50, seed=0)
    path = tmp_path / f"{name}.yaml"
    config = task_config(task, tmp_path / "unused.jsonl", cache_dir=tmp_path)
    path.write_text(yaml.safe_dump(config))
    ours = load_yaml(path, resolve_func=False)
    theirs = load_yaml(task.base_yaml, resolve_func=False)
    assert ours == theirs | {"task": name}
    assert ours["dataset_path"] != "json"


def test_harness_refuses_a_limit_on_top_of_hub_subsets(tmp_path):
    task = benchmark_task("piqa", source="hub", data_dir=tmp_path, limit=50, seed=0)
    with pytest.raises(LwqError, match="not both"):
        Harness([task], workdir=tmp_path, batch_size=2, max_length=8, limit=3)


@pytest.mark.slow
def test_a_quick_sweep_records_tasks_average_and_provenance(tmp_path):
    from lwq.commands.sweep import run_sweep
    from tests.conftest import compose_config, records, small_run_overrides

    overrides = [*small_run_overrides(tmp_path), "eval=quick", "eval.limits={wikitext: 1}"]
    run_sweep(compose_config(*overrides, "sweep.fractions=[0]"))
    written = records(tmp_path)
    assert [r["kind"] for r in written] == ["reference", "quantized"]
    for record in written:
        assert set(record["eval"]["tasks"]) == {"wikitext", "arc_easy", "piqa"}
        assert set(record["eval"]["average"]) == {"acc", "acc_norm"}
        assert record["eval"]["cross_check"] is None
        provenance = record["eval_provenance"]
        assert provenance["items"] == {"wikitext": 1, "arc_easy": 3, "piqa": 3}
        assert provenance["source"] == "local" and provenance["lm_eval_version"] == "0.4.13"
