"""Relative paths in configs mean: relative to the working directory if it exists there,
else to the project root (so `models/ref-tiny` and `../shared/data` work from anywhere)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str | Path) -> Path | str:
    """An absolute Path for local paths; a hub id such as `owner/name` comes back unchanged."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if p.exists():
        return p.resolve()
    rooted = PROJECT_ROOT / p
    if rooted.exists() or str(path).startswith((".", "results", "models")):
        return rooted.resolve()
    return str(path)
