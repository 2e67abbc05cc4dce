"""The README and the pages it links to: the README stays short, every relative link
resolves, every documented `python run.py ...` composes into a checked config, and every
documented `make <target>` exists. Fast: no model loads, nothing runs."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lwq.config import compose_run  # noqa: E402
from lwq.errors import LwqError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [
    README,
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "experiments" / "README.md",
    ROOT / "bench" / "README.md",
]
README_MAX_LINES = 200

# the bare words run.py turns into `command=<word>`
COMMAND_WORDS = ("sweep", "scores", "compare", "export")

# Linked pages that are not in the tree yet (none today).
PENDING_PAGES: set[str] = set()

# Documented commands that name a file the reader brings, which a fresh clone does not
# have: a substring of the command -> the part of the one-line LwqError it must stop with.
# Anything else such a command stops with is a broken command.
NEEDS_A_LOCAL_FILE = {
    "plan_file=my_plan.yaml": "my_plan.yaml not found",  # a hand-edited plan (running.md)
    "file: /data/boolq.jsonl": "/data/boolq.jsonl not found",  # local task data (evaluation.md)
}

# Make targets the docs may name before the Makefile has them (none today).
PENDING_TARGETS: set[str] = set()

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`]*`")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
SEPARATORS = {"&&", "||", ";", "|"}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def split_lines(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(prose, code): the numbered lines outside and inside fenced code blocks; in code,
    lines continued with a trailing backslash are joined and numbered by their first line."""
    prose, code, inside, pending, start = [], [], False, "", 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            prose.append((n, line))
            continue
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        code.append((start, pending + line))
        pending = ""
    return prose, code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(0)[1:-1], heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    for _, line in split_lines(path)[0]:
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            name, count = base, 0
            while name in found:
                count += 1
                name = f"{base}-{count}"
            found.add(name)
    return found


def shell_segments(line: str) -> list[list[str]]:
    """The simple commands of one shell line, comments dropped."""
    segments: list[list[str]] = [[]]
    for word in shlex.split(line, comments=True):
        if word in SEPARATORS:
            segments.append([])
        else:
            segments[-1].append(word)
    return [s for s in segments if s]


def documented_runs() -> list:
    """Every `python run.py ...` in a fenced block that composes without Hydra's multirun,
    a placeholder or llama.cpp's tools, as pytest params named by file and line."""
    params = []
    for page in PAGES:
        for n, line in split_lines(page)[1]:
            if "run.py" not in line:
                continue
            for words in shell_segments(line):
                if words[:2] != ["python", "run.py"]:
                    continue
                args = words[2:]
                if any("<" in a or "$" in a for a in args):  # placeholders, shell variables
                    continue
                if any(a in ("-m", "--multirun") or a.startswith("hydra/launcher") for a in args):
                    continue  # needs Hydra's multirun
                if "export" in args and "export.format=gptq" not in args:
                    continue  # a GGUF export needs llama.cpp's tools built
                args = [f"command={a}" if a in COMMAND_WORDS else a for a in args]
                params.append(pytest.param(args, id=f"{rel(page)}:{n}"))
    return params


def documented_make_targets() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        for n, line in split_lines(page)[1]:
            if "make" not in line:
                continue
            for words in shell_segments(line):
                if words[0] != "make":
                    continue
                for word in words[1:]:
                    if "=" not in word and not word.startswith("-"):
                        found.append((rel(page), n, word))
    return found


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set()
    for match in re.finditer(r"^([A-Za-z0-9_. -]+?)\s*::?(?!=)", text, re.M):
        targets.update(match.group(1).split())
    return targets


RUNS = documented_runs()


def test_the_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page):
    assert page.is_file(), f"{rel(page)} is missing"
    broken = []
    for n, line in split_lines(page)[0]:
        for target in LINK.findall(INLINE_CODE.sub("``", line)):
            if SCHEME.match(target):
                continue  # http:, https:, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                if linked.is_relative_to(ROOT) and rel(linked) in PENDING_PAGES:
                    continue
                broken.append(f"{rel(page)}:{n}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{rel(page)}:{n}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_documented_commands_are_found():
    names = {p.id.split(":")[0] for p in RUNS}
    assert len(RUNS) >= 20 and {"README.md", "docs/running.md"} <= names, names


@pytest.mark.parametrize("overrides", RUNS)
def test_documented_run_composes(overrides):
    try:
        compose_run(*overrides)
    except LwqError as err:
        command = " ".join(overrides)
        expected = [why for key, why in NEEDS_A_LOCAL_FILE.items() if key in command]
        assert expected and expected[0] in str(err), f"python run.py {command}: {err}"


def test_documented_make_targets_exist():
    targets = makefile_targets()
    documented = documented_make_targets()
    assert {"setup", "test"} <= {t for _, _, t in documented}
    missing = [
        f"{page}:{n}: make {t}"
        for page, n, t in documented
        if t not in targets and t not in PENDING_TARGETS
    ]
    assert not missing, "not targets of the Makefile:\n" + "\n".join(missing)
