"""Relative paths in configs mean: relative to the working directory if the thing exists
there, else to the project root (so `models/ref-tiny` and `../shared/data` work from
anywhere); a path that exists in neither place is taken relative to the working directory."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str | Path) -> Path:
    """An absolute local path for a file or directory named in a config."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for base in (Path.cwd(), PROJECT_ROOT):
        if (base / p).exists():
            return (base / p).resolve()
    return (Path.cwd() / p).resolve()


def resolve_model_path(path: str) -> str:
    """A local checkpoint directory (resolved as above) if one exists, else the hub id as given."""
    local = resolve_path(path)
    return str(local) if local.exists() else path
