"""One registry decorator factory for objectives, teachers, strategies, datasets and models."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from kdforge.errors import ConfigError

T = TypeVar("T")


def closest(name: str, choices: list[str], n: int = 3) -> list[str]:
    """Return up to ``n`` entries of ``choices`` that look like ``name``."""
    return difflib.get_close_matches(name, choices, n=n, cutoff=0.4)


def did_you_mean(name: str, choices: list[str], n: int = 3) -> str:
    """`` Did you mean 'x', 'y'?`` for the choices that look like ``name``; empty when none does."""
    near = closest(name, choices, n)
    return f" Did you mean {', '.join(map(repr, near))}?" if near else ""


class Registry(Generic[T]):
    """A named table of builders filled by the ``register`` decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator that adds an object under ``name`` (default: its ``__name__``)."""

        def add(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"{self.kind}: cannot infer a name for {obj!r}")
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Look ``name`` up; an unknown name raises ConfigError listing the valid ones."""
        try:
            return self._items[name]
        except KeyError:
            near = did_you_mean(name, self.names())
            raise ConfigError(
                f"unknown {self.kind} {name!r}.{near} Valid {self.kind}s: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, object) pairs, sorted by name."""
        return iter(sorted(self._items.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


OBJECTIVES: Registry[Any] = Registry("objective")
TEACHERS: Registry[Any] = Registry("teacher")
STRATEGIES: Registry[Any] = Registry("strategy")
DATASETS: Registry[Any] = Registry("dataset")
MODELS: Registry[Any] = Registry("model")
CODECS: Registry[Any] = Registry("codec")
CONNECTORS: Registry[Any] = Registry("connector")
ADAPTERS: Registry[Any] = Registry("model adapter")
CALLBACKS: Registry[Any] = Registry("callback")
