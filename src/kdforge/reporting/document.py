"""What the report says, independent of its format: sections of tables, figures, code and prose."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdforge.report import fmt


@dataclass(frozen=True)
class Table:
    """A table of already formatted cells."""

    columns: list[str]
    rows: list[list[str]]
    role: str = "data"  # "results" marks the comparison tables (the page's class; tests look for it)


@dataclass(frozen=True)
class Figure:
    """A PNG with the file name it gets beside report.md (made by the report, never from a user's name)."""

    file: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class Code:
    """Verbatim text: a resolved recipe, objectives.json."""

    caption: str
    text: str


@dataclass(frozen=True)
class Paragraph:
    """A line of prose."""

    text: str


Block = Table | Figure | Code | Paragraph


@dataclass
class Section:
    """A titled list of blocks."""

    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    """The whole report."""

    title: str
    sections: list[Section]


def cell(key: str, value: Any) -> str:
    """A table cell: fractions as percentages, sizes in KB/MB, FLOPs with a unit prefix, the rest as report.fmt."""
    if value is None:
        return "–"
    if key in ("top5", "macro_f1"):
        return f"{100 * value:.2f}%"
    if key == "size_bytes":
        return f"{value / 1024:.1f} KB" if value < 1024**2 else f"{value / 1024**2:.2f} MB"
    if key == "flops":
        return _prefixed(float(value))
    if key.startswith("latency_ms") or key == "throughput_per_s":
        return f"{value:.4g}"
    if key == "brier":
        return f"{value:.4f}"
    if key == "dev" or key == "test_accuracy":
        return f"{100 * value:.2f}%"
    return fmt(key, value)


def _prefixed(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g}"
