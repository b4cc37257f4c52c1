"""The run directory: resolved recipe, metrics.jsonl, checkpoints/, report.md, summary.json."""

from __future__ import annotations

import glob
import json
import time
from pathlib import Path
from typing import Any

from kdforge.files import (
    atomic_write,
    atomic_write_text,
    read_sealed_lines,
    sealed_line,
    sealed_text,
    sweep_staging_files,
)

METRICS_FIX = "restore it from a backup, or delete the damaged line (its record is lost) and resume or report again"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def _sweep_unstarted(root: Path, name: str, keep: Path) -> None:
    """Remove what runs killed while writing their recipe (a folder's first file) left in their folders.

    Such a folder has no recipe.yaml, so nothing resumes it and no later write to it sweeps the staging file its
    writer left; a user starts the run again instead, which lands here. Only files of writers that are gone go.
    """
    for folder in root.glob(f"{glob.escape(name)}-*"):
        if folder != keep and folder.is_dir() and not (folder / "recipe.yaml").exists():
            sweep_staging_files(folder / "recipe.yaml")


class RunDir:
    """Thin handle on a run's folder; only the main process writes."""

    def __init__(self, path: str | Path, main: bool = True):
        self.path = Path(path)
        self.root = self.path  # the folder a user names to resume (the parent of every variant's folder)
        self.main = main
        self._tail_checked = False
        if main:
            self.path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def new(cls, root: str | Path, name: str, main: bool = True) -> RunDir:
        """A fresh folder ``root/name-YYYYmmdd-HHMMSS`` (suffixed if it exists)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(root).expanduser() / f"{name}-{stamp}"
        path, n = base, 1
        while main:
            try:
                path.mkdir(parents=True, exist_ok=False)  # claims the name even against a concurrent run
                break
            except FileExistsError:
                path, n = base.with_name(f"{base.name}-{n}"), n + 1
        if main:
            _sweep_unstarted(path.parent, name, keep=path)
        return cls(path, main)

    def child(self, name: str) -> RunDir:
        """A sub-run folder (one per variant)."""
        child = RunDir(self.path / name, self.main)
        child.root = self.root
        return child

    @property
    def checkpoints(self) -> Path:
        """Folder holding ``best/`` and ``last/``."""
        return self.path / "checkpoints"

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl."""
        if not self.main:
            return
        if not self._tail_checked:
            self._drop_torn_tail()
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(sealed_line({k: _jsonable(v) for k, v in record.items()}))

    def write_text(self, name: str, text: str) -> None:
        """Atomically write a text file in the run folder."""
        if self.main:
            atomic_write_text(self.path / name, text)

    def _drop_torn_tail(self) -> None:
        """Cut a last line a killed writer left without its newline, so the next record starts a line of its own."""
        self._tail_checked = True
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            atomic_write(path, lambda p: p.write_bytes(data[: data.rfind(b"\n") + 1]))

    def write_recipe(self, text: str) -> None:
        """Write the resolved recipe, sealed: resume, re-run and export refuse it once damaged."""
        self.write_text("recipe.yaml", sealed_text(text))

    def write_json(self, name: str, data: Any) -> None:
        """Atomically write a JSON file in the run folder."""
        self.write_text(name, json.dumps(data, indent=2, default=_jsonable) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop metric lines past ``step``: a resumed run logs those steps again, once."""
        path = self.path / "metrics.jsonl"
        if not self.main or not path.exists():
            return
        kept = [r for r in self.read_metrics() if int(r.get("step", 0)) <= step]
        atomic_write_text(path, "".join(sealed_line(r) for r in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        """All records of metrics.jsonl."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return read_sealed_lines(path, METRICS_FIX, what="metrics log")
