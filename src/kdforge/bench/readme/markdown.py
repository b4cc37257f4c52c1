"""Markdown building blocks of the README's results tables."""

from __future__ import annotations


def pm(stat: dict) -> str:
    """'mean ± std' in percent."""
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", *(f"| {' | '.join(r)} |" for r in rows)]


def accuracy_rows(entries: dict, keys: tuple[str, ...]) -> list[list[str]]:
    """One row per entry: its name, then 'mean ± std' of each accuracy key."""
    return [[name, *(pm(e[k]) for k in keys)] for name, e in entries.items()]


def mean_sd(values: list[float]) -> str:
    """'mean ± sd' over seeds (the sd with n − 1; only the mean for one seed)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return "–"
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return f"{m:,.1f}"
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
    return f"{m:,.1f} ± {sd:,.1f}"
