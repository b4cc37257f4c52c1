"""Where a suite's results live, which cells are finished, and the summary over seeds (mean ± std)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from kdforge.bench.suite import Cell, Suite
from kdforge.evaluate.full import json_safe
from kdforge.files import atomic_write_text
from kdforge.version import __version__

SUMMARY = "summary.json"


def suite_folder(results: Path, suite: Suite, overrides: list[str]) -> Path:
    """``<results>/<suite>``; runs with --set overrides go to ``<suite>+<hash>`` so they never replace the real ones."""
    if not overrides:
        return results / suite.name
    return results / f"{suite.name}+{cell_key(sorted(overrides))[:8]}"


def cell_path(folder: Path, cell: Cell, seed: int) -> Path:
    """``<suite folder>/<cell>/seed-<k>.json`` (a cell name's '/' nests folders: pair/method)."""
    return folder / cell.name / f"seed-{seed}.json"


def cell_key(identity: Any) -> str:
    """A short hash of what defines a cell (its resolved recipe or probe and overrides): a changed cell reruns."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished_record(path: Path, key: str) -> dict[str, Any] | None:
    """The cell's record when it finished with this definition; None when absent, unreadable or stale."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged file is measured again, never trusted
    return record if isinstance(record, dict) and record.get("key") == key and "metrics" in record else None


def machine() -> dict[str, Any]:
    """Where a figure was measured."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "kdforge": __version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically (a kill never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Strict JSON: a metric that was not measured (NaN) is written as null.
    atomic_write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def stamp() -> str:
    """Today's date, for the record."""
    return time.strftime("%Y-%m-%d")


def mean_std(values: list[float]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation of the finite values (std 0 for one value; None for none)."""
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": statistics.fmean(finite),
        "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
        "n": len(finite),
    }


def summarise(suite: Suite, cells: list[Cell], records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One entry per cell: its group labels and mean ± std over seeds of every metric its records report."""
    entries = []
    for cell in cells:
        runs = records.get(cell.name, [])
        if not runs:
            continue
        names = list(dict.fromkeys(k for r in runs for k in r["metrics"]))
        entries.append(
            {
                "cell": cell.name,
                **cell.group,
                "seeds": sorted(r["seed"] for r in runs),
                "metrics": {k: mean_std([r["metrics"].get(k, math.nan) for r in runs]) for k in names},
            }
        )
    return {
        "suite": suite.name,
        "description": suite.description,
        "metric": suite.metric,
        "columns": [
            {"metric": c.metric, "heading": c.heading, "percent": c.percent, "digits": c.digits} for c in suite.columns
        ],
        "cells": entries,
    }


def format_stat(stat: dict[str, Any] | None, percent: bool, digits: int) -> str:
    """'mean ± std' (in percent when asked); '–' when the metric was not measured."""
    if not stat or stat.get("mean") is None:
        return "–"
    scale = 100.0 if percent else 1.0
    mean, std = scale * stat["mean"], scale * (stat["std"] or 0.0)
    return f"{mean:.{digits}f}" if stat.get("n", 0) < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a summary table (group labels, seeds, then the suite's columns)."""
    entries = summary["cells"]
    labels = list(dict.fromkeys(k for e in entries for k in e if k not in ("cell", "seeds", "metrics")))
    header = [*labels, "seeds", *(c["heading"] for c in summary["columns"])]
    rows = [
        [
            *(str(e.get(k, "")) for k in labels),
            str(len(e["seeds"])),
            *(format_stat(e["metrics"].get(c["metric"]), c["percent"], c["digits"]) for c in summary["columns"]),
        ]
        for e in entries
    ]
    return header, rows
