"""`kdforge bench SUITE --seeds N`: run every unfinished cell, then write the summary and the README tables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdforge.bench import suites as _suites  # noqa: F401  (fills the registry)
from kdforge.bench.cells import resolved_recipe, run_probe_cell, run_recipe_cell
from kdforge.bench.results import (
    SUMMARY,
    cell_key,
    cell_path,
    finished_record,
    machine,
    stamp,
    suite_folder,
    summarise,
    write_json,
)
from kdforge.bench.suite import SUITES, Cell, Suite
from kdforge.errors import ConfigError


@dataclass
class BenchReport:
    """What one invocation did: cells run and skipped, the summary and where it was written."""

    suite: str
    ran: list[str]
    skipped: list[str]
    summary: dict[str, Any]
    summary_path: Path


def get_suite(name: str) -> Suite:
    """The registered suite, or a ConfigError listing the known ones."""
    try:
        return SUITES.get(name)
    except ConfigError as err:
        raise ConfigError(f"SUITE: {err}") from None


def select_cells(suite: Suite, only: list[str] | None) -> list[Cell]:
    """The suite's cells, or those whose name starts with one of ``only`` (a pair, a method, a full name)."""
    cells = suite.cells()
    if not only:
        return cells
    picked = [c for c in cells if any(c.name == o or c.name.startswith(o.rstrip("/") + "/") for o in only)]
    if not picked:
        names = ", ".join(c.name for c in cells)
        raise ConfigError(f"--cells {only}: no cell of suite {suite.name!r} matches; cells: {names}")
    return picked


def _identity(suite: Suite, cell: Cell, seed: int, overrides: list[str]) -> dict[str, Any]:
    """What defines a cell's result: its resolved recipe (or probe name), seed and overrides."""
    if cell.recipe is not None:
        # Tracking only mirrors the numbers elsewhere, so it must not make a finished cell look stale.
        recipe = resolved_recipe(cell, seed, overrides).model_dump(mode="json", exclude={"track"})
        return {"recipe": recipe, "overrides": overrides}
    return {"probe": f"{suite.name}/{cell.name}", "seed": seed}


def validate_suite(suite: Suite, seeds: list[int], overrides: list[str], only: list[str] | None = None) -> int:
    """Resolve every recipe cell (data, models, objectives, strategy) without running it; returns the cell count."""
    cells = select_cells(suite, only)
    for cell in cells:
        for seed in seeds:
            if cell.recipe is not None:
                resolved_recipe(cell, seed, overrides)
    return len(cells) * len(seeds)


def run_suite(
    name: str,
    seeds: list[int],
    results: str | Path,
    overrides: list[str] | None = None,
    only: list[str] | None = None,
    work: str | Path | None = None,
    say: Callable[[str], None] = lambda _: None,
    run_missing: bool = True,
) -> BenchReport:
    """Run the suite's unfinished cells over ``seeds`` (finished ones are skipped), then summarise all of them;
    ``run_missing=False`` only summarises what is on disk."""
    suite = get_suite(name)
    if not seeds:
        raise ConfigError("--seeds must be at least 1")
    extra = list(overrides or [])
    cells = select_cells(suite, only)
    folder = suite_folder(Path(results), suite, extra)
    ran: list[str] = []
    skipped: list[str] = []
    # Validate everything first: a typo in the last cell must not surface after hours of training.
    keys = {(c.name, s): cell_key(_identity(suite, c, s, extra)) for c in cells for s in seeds}
    total = len(keys)
    for cell in cells:
        for seed in seeds:
            label = f"{cell.name} seed {seed}"
            path = cell_path(folder, cell, seed)
            key = keys[(cell.name, seed)]
            if finished_record(path, key) is not None or not run_missing:
                skipped.append(label)
                continue
            say(f"[{len(ran) + len(skipped) + 1}/{total}] {suite.name}: {label}")
            if cell.recipe is not None:
                out = run_recipe_cell(suite, cell, seed, extra, Path(work).expanduser() if work else None)
            else:
                out = run_probe_cell(cell, seed)
            record = {
                "suite": suite.name,
                "cell": cell.name,
                **cell.group,
                "seed": seed,
                "key": key,
                "overrides": extra,
                "date": stamp(),
                "machine": machine(),
                **out,
            }
            write_json(path, record)
            ran.append(label)
    summary_path = folder / SUMMARY
    summary = summarise(suite, suite.cells(), collect(folder, suite, extra))
    if extra:
        summary["overrides"] = extra
    write_json(summary_path, summary)
    return BenchReport(suite.name, ran, skipped, summary, summary_path)


def collect(folder: Path, suite: Suite, overrides: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every finished record of the suite on disk whose cell is still defined so (any seed ever run), by cell."""
    out: dict[str, list[dict[str, Any]]] = {}
    for cell in suite.cells():
        cell_dir = folder / cell.name
        for path in sorted(cell_dir.glob("seed-*.json")) if cell_dir.is_dir() else []:
            seed = path.stem.removeprefix("seed-")
            if not seed.isdigit():
                continue
            record = finished_record(path, cell_key(_identity(suite, cell, int(seed), overrides)))
            if record is not None:
                out.setdefault(cell.name, []).append(record)
    return out
