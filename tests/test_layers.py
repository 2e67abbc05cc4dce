"""Packages import downward only, in the order docs/architecture.md states, and no module
imports itself in a circle: the import graph, read from the source."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lwq"


def _layers() -> dict[str, int]:
    """Package -> depth (0 = top) from the fenced list under "## Layers"."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"## Layers.*?```text\n(.*?)```", text, re.S).group(1)
    return {name: depth for depth, line in enumerate(block.splitlines()) for name in line.split()}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The lwq modules `path` imports, anywhere in it (functions' imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lwq"):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("lwq")]
        else:
            continue
        for name in names:
            while name not in modules and "." in name:  # `from lwq.x import y` where y is no module
                name = name.rsplit(".", 1)[0]
            found.add(name)
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lwq"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_package_has_a_layer_in_the_docs():
    packages = {_package(m) for m in _modules()}
    assert packages == set(_layers()), "add or remove packages in docs/architecture.md"


def test_no_package_imports_a_package_above_it():
    depth = _layers()
    upward = [
        f"{m} imports {t}"
        for m, targets in _graph().items()
        for t in targets
        if depth[_package(t)] < depth[_package(m)]
    ]
    assert upward == []


def test_neither_modules_nor_packages_import_in_a_circle():
    graph = _graph()
    assert _cycle(graph) is None
    packages: dict[str, set[str]] = {}
    for m, targets in graph.items():
        packages.setdefault(_package(m), set()).update(_package(t) for t in targets)
    assert _cycle({p: t - {p} for p, t in packages.items()}) is None


def test_the_check_finds_an_upward_import_and_a_cycle():
    """The checks themselves can fail: quant importing export would be caught."""
    depth = _layers()
    assert depth["export"] < depth["quant"]  # so `lwq.quant.x -> lwq.export.y` is upward
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
