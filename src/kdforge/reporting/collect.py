"""Read run folders into one model of what a report shows: recipes, training logs, summaries, evaluation records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdforge.engine.rundir import METRICS_FIX
from kdforge.errors import ConfigError, KdforgeError
from kdforge.files import read_sealed_lines, read_sealed_text
from kdforge.recipe import RUN_RECIPE_FIX

CHECKPOINTS = ("last", "best")


@dataclass
class StudentFolder:
    """One trained student's folder (the run itself, or a variant): its summary and its training logs."""

    name: str
    folder: Path
    summary: dict[str, Any]
    # Log source ("" for the folder's own metrics.jsonl, else the sub-folder: a round, a generation) -> records.
    logs: dict[str, list[dict[str, Any]]]


@dataclass
class RunData:
    """Everything the report reads from one run folder."""

    path: Path
    kind: str  # classification | lm
    recipe_text: str
    objectives_text: str | None
    summary: dict[str, Any]
    students: list[StudentFolder]
    record: dict[str, Any] | None  # the evaluation record (docs/evaluation.md), None when it could not be made
    class_names: list[str] | None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The run folder's name, which the report uses for the run."""
        return self.path.name


def read_json(path: Path) -> Any:
    """A JSON file's content; a malformed file is a ConfigError naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{str(path)!r} is not valid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{str(path)!r} is not valid JSON (not UTF-8 text)") from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, each line's seal checked; a line cut short by a killed run is skipped."""
    return read_sealed_lines(path, METRICS_FIX, what="metrics log")


def _logs(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """The folder's own metrics.jsonl, or else those of its sub-folders (teaching rounds, generations, links)."""
    own = folder / "metrics.jsonl"
    if own.is_file():
        return {"": read_metrics(own)}
    return {p.parent.name: read_metrics(p) for p in sorted(folder.glob("*/metrics.jsonl"), key=_natural)}


def _natural(path: Path) -> tuple[Any, ...]:
    """round-2 before round-10."""
    name = path.parent.name
    head, _, tail = name.rpartition("-")
    return (head, int(tail), "") if tail.isdigit() else (name, -1, name)


def _objectives(folders: list[Path]) -> str | None:
    """Every objectives.json under the run (what automatic maps resolved to), one titled block each."""
    found = sorted({p for f in folders for p in [f / "objectives.json", *f.glob("*/objectives.json")] if p.is_file()})
    if not found:
        return None
    root = folders[0].parent if len(folders) > 1 else folders[0]
    return "\n".join(f"# {p.relative_to(root)}\n{p.read_text().rstrip()}\n" for p in found)


def evaluation_record(run_dir: Path, checkpoint: str) -> tuple[dict[str, Any] | None, str | None]:
    """``RUN/eval-<checkpoint>.json`` when it holds a full record of the checkpoints the run holds now, else evaluate
    now; (None, why) when impossible."""
    from kdforge.progress import status
    from kdforge.rerun import evaluate_path, record_is_current

    path = run_dir / f"eval-{checkpoint}.json"
    if path.is_file():
        record = read_json(path)
        # A run resumed (or retrained) since its record was written holds other weights: the record is stale.
        full = isinstance(record, dict) and isinstance(record.get("models"), dict)
        if full and record_is_current(record, run_dir, checkpoint):
            return record, None
    try:
        with status(f"evaluating {run_dir.name} ({checkpoint} checkpoint)"):
            record, _ = evaluate_path(run_dir, checkpoint)
    except (KdforgeError, RuntimeError, OSError, ValueError) as err:
        # A run whose students cannot be rebuilt (its data set gone, a strategy that keeps no checkpoint at its top,
        # weights that no longer fit the recipe) still has its logs and recorded metrics: the page says why it shows
        # those instead, and the other runs are reported.
        why = str(err) if isinstance(err, KdforgeError) else f"{type(err).__name__}: {err}"
        return None, f"not re-evaluated ({why}); the table shows the test metrics the run recorded"
    return record, None


def collect_run(run_dir: str | Path, checkpoint: str = "last", evaluate: bool = True) -> RunData:
    """Read one run folder (its variants too) and its evaluation record."""
    path = Path(run_dir).expanduser()
    if not (path / "recipe.yaml").is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run folder (no recipe.yaml)")
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"--checkpoint {checkpoint!r}: expected one of {', '.join(CHECKPOINTS)}")
    from kdforge.rerun import run_folders  # recipes, strategies, torch: only once the folder looks like a run

    folders = run_folders(path)
    summary_path = path / "summary.json"
    summary = read_json(summary_path) if summary_path.is_file() else {}
    notes = [] if summary else ["no summary.json: the run has not finished"]
    students = []
    for folder in folders:
        own = read_json(folder / "summary.json") if (folder / "summary.json").is_file() else {}
        students.append(StudentFolder(own.get("name") or folder.name, folder, own, _logs(folder)))
    record, why = evaluation_record(_evaluated_folder(path, summary), checkpoint) if evaluate else (None, None)
    if why:
        notes.append(why)
    return RunData(
        path=path,
        kind=_kind(record, students),
        recipe_text=read_sealed_text(path / "recipe.yaml", RUN_RECIPE_FIX, what="run recipe"),
        objectives_text=_objectives(folders),
        summary=summary,
        students=students,
        record=record,
        class_names=_class_names(record, folders),
        notes=notes,
    )


def _evaluated_folder(path: Path, summary: dict[str, Any]) -> Path:
    """The folder whose students are evaluated: the run, or (a teaching loop) the round whose student it kept."""
    best = summary.get("best_round")
    kept = path / f"round-{best}"
    if best is not None and not (path / "checkpoints").exists() and (kept / "recipe.yaml").is_file():
        return kept
    return path


def _kind(record: dict[str, Any] | None, students: list[StudentFolder]) -> str:
    if record and record.get("kind") in ("classification", "lm"):
        return record["kind"]
    lm = any((s.summary.get("test") or {}).get("perplexity") is not None for s in students)
    return "lm" if lm else "classification"


def _class_names(record: dict[str, Any] | None, folders: list[Path]) -> list[str] | None:
    if record and record.get("class_names"):
        return [str(n) for n in record["class_names"]]
    for folder in folders:
        for path in (folder / "labels.json", *sorted(folder.glob("*/labels.json"))):
            if path.is_file():
                labels = read_json(path)
                if not isinstance(labels, dict) or not isinstance(labels.get("labels", []), list):
                    raise ConfigError(f"{str(path)!r} is damaged; expected a JSON object with a 'labels' list")
                names = labels.get("labels")
                return [str(n) for n in names] if names else None
    return None
