"""Read the local benchmark files (../shared/data, see its SOURCES.md) in the hub's schema.

Each reader returns every document of one benchmark split, in file order, as the dict
lm-eval's built-in task for that benchmark reads from the Hugging Face data set, so the
task's own prompts (doc_to_text, doc_to_choice, process_docs, ...) apply unchanged.

Differences that cannot be removed (the local files hold less than the hub rows):
- HellaSwag: the file has `ctx` already preprocessed by its upstream author and no
  `ctx_a`/`ctx_b` split. We put the whole `ctx` into `ctx_a` and leave `ctx_b` empty, so
  lm-eval's query is `activity_label: ctx`: `ctx_b` is not capitalised as on the hub,
  and bracket tags were removed by the upstream rules rather than lm-eval's regex.
- WikiText-2: the local file lacks the empty rows of the hub data (blank lines), so each
  page (one article, `lwq.texts.wikitext_articles`) has fewer newlines than the hub's
  document-level page: byte counts and the token stream differ slightly.
- ARC, PIQA, Winogrande, LAMBADA: the same items and fields as the hub data sets; only
  the split's row order may differ (the subset is seeded on the local order).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lwq.data import WIKITEXT_TEST, wikitext_articles
from lwq.errors import LwqError
from lwq.registry import Registry

Reader = Callable[[Path], list[dict]]
READERS: Registry[Reader] = Registry("local benchmark")

# The files each reader reads, under the data directory (records hash them).
FILES = {
    "arc_easy": ("arc/ARC-Easy-Test.jsonl",),
    "arc_challenge": ("arc/ARC-Challenge-Test.jsonl",),
    "hellaswag": ("hellaswag/hellaswag_val_full.txt",),
    "piqa": ("piqa/valid.jsonl", "piqa/valid-labels.lst"),
    "winogrande": ("winogrande/dev.jsonl", "winogrande/dev-labels.lst"),
    "lambada_openai": ("lambada/lambada_test.jsonl",),
    "wikitext": (WIKITEXT_TEST,),
}


def local_files(benchmark: str, data_dir: Path) -> list[Path]:
    """The files `read_local(benchmark, data_dir)` reads."""
    return [Path(data_dir) / name for name in FILES[benchmark]]


def read_local(benchmark: str, data_dir: Path) -> list[dict]:
    """Every document of `benchmark` from `data_dir`, in the hub schema, in file order."""
    return READERS.get(benchmark)(Path(data_dir))


@READERS.register("arc_easy")
def arc_easy(data_dir: Path) -> list[dict]:
    return _arc(*local_files("arc_easy", data_dir))


@READERS.register("arc_challenge")
def arc_challenge(data_dir: Path) -> list[dict]:
    return _arc(*local_files("arc_challenge", data_dir))


def _arc(path: Path) -> list[dict]:
    """AI2's nested jsonl -> `allenai/ai2_arc`: choices as {"text": [...], "label": [...]}."""
    docs = []
    for row in _jsonl(path):
        choices = row["question"]["choices"]
        docs.append(
            {
                "id": row["id"],
                "question": row["question"]["stem"],
                "choices": {
                    "text": [c["text"] for c in choices],
                    "label": [c["label"] for c in choices],
                },
                "answerKey": row["answerKey"],
            }
        )
    return docs


@READERS.register("hellaswag")
def hellaswag(data_dir: Path) -> list[dict]:
    """6 lines per item (`label: ctx`, gold, 4 endings) -> `Rowan/hellaswag` fields."""
    (path,) = local_files("hellaswag", data_dir)
    lines = _read(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise LwqError(f"{path}: {len(lines)} lines is not 6 lines per item; is it the right file?")
    docs = []
    for i in range(0, len(lines), 6):
        activity_label, _, ctx = lines[i].partition(": ")
        docs.append(
            {
                "ind": i // 6,
                "activity_label": activity_label,
                "ctx_a": ctx,
                "ctx_b": "",  # not in the file: see the module docstring
                "ctx": ctx,
                "endings": lines[i + 2 : i + 6],
                "label": lines[i + 1].strip(),  # a string on the hub, too
            }
        )
    return docs


@READERS.register("piqa")
def piqa(data_dir: Path) -> list[dict]:
    """valid.jsonl (goal, sol1, sol2) + valid-labels.lst (0 = sol1) -> `baber/piqa`."""
    items, answers = local_files("piqa", data_dir)
    rows = _jsonl(items)
    labels = _labels(answers, len(rows))
    return [
        {"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(label)}
        for r, label in zip(rows, labels, strict=True)
    ]


@READERS.register("winogrande")
def winogrande(data_dir: Path) -> list[dict]:
    """dev.jsonl + dev-labels.lst -> `allenai/winogrande` (answer the string "1" or "2")."""
    items, answers = local_files("winogrande", data_dir)
    rows = _jsonl(items)
    labels = _labels(answers, len(rows))
    docs = []
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        if str(row["answer"]) != label:
            raise LwqError(f"winogrande item {i}: answer {row['answer']!r} but label {label!r}")
        docs.append({k: row[k] for k in ("sentence", "option1", "option2")} | {"answer": label})
    return docs


@READERS.register("lambada_openai")
def lambada_openai(data_dir: Path) -> list[dict]:
    """OpenAI's detokenized test file -> `EleutherAI/lambada_openai` (a `text` field)."""
    (path,) = local_files("lambada_openai", data_dir)
    return [{"text": row["text"]} for row in _jsonl(path)]


@READERS.register("wikitext")
def wikitext(data_dir: Path) -> list[dict]:
    """Raw WikiText-2 test -> `EleutherAI/wikitext_document_level`: one `page` per article."""
    (path,) = local_files("wikitext", data_dir)
    return [{"page": page} for page in wikitext_articles(_read(path))]


FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def read_mapped(task: str, entry: dict) -> list[dict]:
    """Documents of any task from one local file, `entry` = {file: path, fields: {the task's
    field: the file's field}}; the file's own fields are kept, the mapped ones added."""
    unknown = sorted(set(entry) - {"file", "fields"})
    if unknown or "file" not in entry:
        raise LwqError(f"eval.local.{task} takes file and fields, got {sorted(entry)}")
    path = Path(str(entry["file"])).expanduser()
    builder = FORMATS.get(path.suffix)
    if builder is None:
        raise LwqError(f"eval.local.{task}.file={path}: use a {', '.join(FORMATS)} file")
    if not path.is_file():
        raise LwqError(f"eval.local.{task}.file={path} not found")
    from datasets import load_dataset

    rows = load_dataset(builder, data_files=str(path.resolve()), split="train").to_list()
    fields = dict(entry.get("fields") or {})
    missing = sorted({f for f in fields.values() if rows and f not in rows[0]})
    if missing:
        raise LwqError(f"eval.local.{task}: {path} has no field {missing[0]!r}")
    return [row | {ours: row[theirs] for ours, theirs in fields.items()} for row in rows]


def _read(path: Path) -> str:
    if not path.is_file():
        raise LwqError(
            f"benchmark file {path} not found; point to the data dir with paths.data=<dir> "
            "or the LWQ_DATA environment variable"
        )
    return path.read_text(encoding="utf-8")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in _read(path).splitlines() if line.strip()]


def _labels(path: Path, expected: int) -> list[str]:
    labels = [line.strip() for line in _read(path).splitlines() if line.strip()]
    if len(labels) != expected:
        raise LwqError(f"{path} has {len(labels)} labels for {expected} items")
    return labels
