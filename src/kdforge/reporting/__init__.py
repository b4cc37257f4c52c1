"""`kdforge report RUN_DIR...`: one self-contained HTML page and a Markdown twin comparing teachers and students."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdforge.files import atomic_write, atomic_write_text
from kdforge.progress import status
from kdforge.reporting.build import build_document
from kdforge.reporting.collect import RunData, collect_run
from kdforge.reporting.document import Document, Figure
from kdforge.reporting.html import render_html
from kdforge.reporting.markdown import render_markdown

__all__ = ["ReportFiles", "RunData", "build_document", "collect_run", "render_html", "render_markdown", "write_report"]


@dataclass(frozen=True)
class ReportFiles:
    """What ``write_report`` wrote, and what it could not show (one line per problem)."""

    html: Path
    markdown: Path
    figures: list[Path]
    notes: list[str]


def write_report(
    run_dirs: list[str | Path], out_dir: str | Path | None = None, checkpoint: str = "last"
) -> ReportFiles:
    """Read (and evaluate where needed) every run folder, then write report.html, report.md and the PNGs."""
    if not run_dirs:
        from kdforge.errors import ConfigError

        raise ConfigError("kdforge report: give at least one RUN_DIR")
    runs = [collect_run(path, checkpoint) for path in run_dirs]
    out = Path(out_dir).expanduser() if out_dir is not None else runs[0].path / "report"
    out.mkdir(parents=True, exist_ok=True)
    with status(f"drawing the report's figures ({len(runs)} run{'s' if len(runs) > 1 else ''})"):
        doc = build_document(runs, checkpoint)
    figures = [_write_png(out / f.file, f.png) for f in _figures(doc)]
    atomic_write_text(out / "report.md", render_markdown(doc))
    atomic_write_text(out / "report.html", render_html(doc))
    notes = [f"{run.name}: {note}" for run in runs for note in run.notes]
    return ReportFiles(out / "report.html", out / "report.md", figures, notes)


def _figures(doc: Document) -> list[Figure]:
    return [b for s in doc.sections for b in s.blocks if isinstance(b, Figure)]


def _write_png(path: Path, png: bytes) -> Path:
    atomic_write(path, lambda tmp: tmp.write_bytes(png))
    return path
