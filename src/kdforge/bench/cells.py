"""Run one cell and turn what it produced into the flat metrics the summary aggregates."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from kdforge.bench.suite import Cell, Suite, Tree
from kdforge.engine.rundir import RunDir
from kdforge.errors import ConfigError, KdforgeError
from kdforge.recipe import Recipe, load_run_recipe


def resolved_recipe(cell: Cell, seed: int, overrides: list[str]) -> Recipe:
    """The cell's recipe for ``seed`` with the command's key=value overrides applied, validated."""
    from kdforge.runner import resolve

    assert cell.recipe is not None
    tree: Tree = cell.recipe(seed)
    try:
        return resolve(tree, overrides)
    except ConfigError as err:
        raise ConfigError(f"cell {cell.name!r} (seed {seed}): {err}") from None


def scores(history: list[dict[str, Any]], split: str, metric: str) -> list[tuple[float, float]]:
    """(epoch, value) of ``metric`` on ``split`` at every evaluation, in order."""
    return [(float(r["epoch"]), float(r[split][metric])) for r in history if metric in r.get(split, {})]


def curve_metrics(history: list[dict[str, Any]], metric: str, higher_is_better: bool) -> dict[str, float]:
    """Last-epoch and best-epoch test values, the best epoch, and the test value at the best validation epoch."""
    test = scores(history, "test", metric)
    if not test:
        raise ConfigError(f"the run evaluated no 'test' {metric!r}; a benchmark cell needs a test split")
    pick = max if higher_is_better else min
    best_epoch, best = pick(test, key=lambda p: p[1])
    val = scores(history, "val", metric)
    at_val = dict(test).get(pick(val, key=lambda p: p[1])[0], math.nan) if val else math.nan
    return {
        "test_last": test[-1][1],
        "test_best": best,
        "best_epoch": best_epoch,
        "last_epoch": test[-1][0],
        "test_at_best_val": at_val,
    }


def run_recipe_cell(suite: Suite, cell: Cell, seed: int, overrides: list[str], work: Path | None) -> dict[str, Any]:
    """Train the cell's recipe through the same runner as `kdforge run`; returns its metrics and history."""
    from kdforge.runner import run

    recipe = resolved_recipe(cell, seed, overrides)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kdforge-bench-") as tmp:
        folder = (work / suite.name / cell.name / f"seed-{seed}") if work is not None else Path(tmp) / "run"
        result = run(recipe, RunDir(folder), resume=_resumable(folder, recipe))
    summary = result["runs"][recipe.name]
    history = [
        {"epoch": r["epoch"], **{s: {suite.metric: r[s][suite.metric]} for s in ("val", "test") if s in r}}
        for r in summary["history"]
    ]
    metrics = curve_metrics(summary["history"], suite.metric, suite.higher_is_better)
    metrics["train_wall_s"] = float(summary.get("train_wall_s") or 0.0)
    return {
        "metrics": metrics,
        "history": history,
        "recipe": recipe.model_dump(mode="json"),
        "wall_s": time.perf_counter() - started,
    }


def _resumable(folder: Path, recipe: Recipe) -> bool:
    """Whether ``folder`` holds an interrupted run of this very recipe (continue it); any other content is cleared."""

    if not folder.exists():
        return False
    try:
        same = load_run_recipe(folder / "recipe.yaml") == recipe.model_dump(mode="json")
    except (KdforgeError, OSError):  # a damaged kept recipe: measured again
        same = False
    if not same:
        # A kept folder of another definition: its metrics.jsonl would be appended to and mix two histories.
        shutil.rmtree(folder)
    return same


def run_probe_cell(cell: Cell, seed: int) -> dict[str, Any]:
    """Run a measuring probe; its returned ``metrics`` are aggregated, the rest is kept as it is."""
    assert cell.probe is not None
    started = time.perf_counter()
    out = cell.probe(seed)
    if not isinstance(out.get("metrics"), dict):
        raise TypeError(f"probe of cell {cell.name!r} returned no 'metrics' dict")
    return {**out, "wall_s": time.perf_counter() - started}
