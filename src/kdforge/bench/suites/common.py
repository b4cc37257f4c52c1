"""What the suites share: the accuracy columns of a training cell and an AdamW + cosine training section."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from kdforge.bench.suite import Cell, Column, Tree

ACCURACY_COLUMNS = (
    Column("test_last", "last-epoch test acc (%)", percent=True),
    Column("test_best", "best-epoch test acc (%)", percent=True),
    Column("best_epoch", "best epoch", digits=1),
    Column("test_at_best_val", "test acc at best val (%)", percent=True),
)


def adamw_cosine(epochs: float, lr: float = 0.002) -> dict[str, Any]:
    """AdamW with a cosine schedule, quiet logging."""
    optimizer = {"name": "adamw", "lr": lr}
    return {"epochs": epochs, "optimizer": optimizer, "schedule": {"name": "cosine"}, "log_every": 1000}


def method_cells(pairs: Iterable[str], methods: Iterable[str], recipe: Callable[[str, str, int], Tree]) -> list[Cell]:
    """One cell per (pair, method), named ``pair/method``; its recipe for a seed is ``recipe(pair, method, seed)``."""
    methods = list(methods)
    return [Cell(f"{p}/{m}", {"pair": p, "method": m}, functools.partial(recipe, p, m)) for p in pairs for m in methods]
