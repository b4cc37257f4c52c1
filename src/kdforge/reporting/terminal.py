"""`kdforge eval`'s terminal table: the report's results columns for every model of an evaluation record."""

from __future__ import annotations

from typing import Any

from kdforge.reporting.columns import CLASSIFICATION_COLUMNS, LM_COLUMNS, headings
from kdforge.reporting.document import cell
from kdforge.reporting.rows import model_row
from kdforge.tables import FittedTable, fitted


def eval_table(record: dict[str, Any], title: str) -> FittedTable:
    """One row per model of ``record`` (docs/evaluation.md), fitted to the console it is printed on."""
    columns = LM_COLUMNS if record.get("kind") == "lm" else CLASSIFICATION_COLUMNS
    rows = [model_row("", name, m.get("metrics"), m.get("profile")) for name, m in record["models"].items()]
    heads = ["run", *headings(columns, [r["batch_size"] for r in rows if r["batch_size"] is not None])]
    cells = [[r["model"], *(cell(k, r[k]) for k, _ in columns)] for r in rows]
    return fitted(title, heads, cells, ["left"] + ["right"] * len(columns))
