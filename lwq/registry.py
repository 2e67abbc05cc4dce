"""One registry idiom for everything selected by a config group (metric=..., quant=...)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from lwq.errors import LwqError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, filled by a decorator; unknown names list the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            for name in names:
                if name in self._items:
                    raise ValueError(f"{self.kind} {name!r} registered twice")
                self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise LwqError(
                f"unknown {self.kind} {name!r}{hint}; known: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def unregister(self, name: str) -> None:
        """Remove `name` (a test's own entry, after the test)."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._items)
