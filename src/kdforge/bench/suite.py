"""A benchmark suite: named cells (a recipe, or a measuring probe), each run once per seed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kdforge.registry import Registry

Tree = dict[str, Any]


@dataclass(frozen=True)
class Column:
    """One column of a suite's summary table: a metric, its heading, and how its values print."""

    metric: str
    heading: str
    percent: bool = False
    digits: int = 2


@dataclass(frozen=True)
class Cell:
    """One measurement of a suite: a recipe tree for a seed (trained by the runner) or a probe returning metrics.

    ``group`` holds the labels the summary table shows (pair, method, ...); ``name`` is unique within the suite and
    names the cell's folder under the results.
    """

    name: str
    group: dict[str, str]
    recipe: Callable[[int], Tree] | None = None
    probe: Callable[[int], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Suite:
    """A suite's cells, how a recipe cell's history is scored, and the summary table's columns."""

    name: str
    description: str
    cells: Callable[[], list[Cell]]
    columns: tuple[Column, ...]
    metric: str = "accuracy"  # the evaluation metric a recipe cell's best epoch is chosen on
    higher_is_better: bool = True
    requires: tuple[str, ...] = field(default_factory=tuple)  # what must exist here to run it (said in --list)


SUITES: Registry[Suite] = Registry("benchmark suite")


def register_suite(suite: Suite) -> Suite:
    """Add a suite to the registry (its name is the CLI's SUITE argument)."""
    SUITES.register(suite.name)(suite)
    return suite
