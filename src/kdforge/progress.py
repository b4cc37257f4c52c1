"""Rich progress bars for every long step, shown only on the main process of an interactive run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def enabled(main: bool = True) -> bool:
    """Bars are drawn on the main process unless KDFORGE_PROGRESS=0."""
    return main and os.environ.get("KDFORGE_PROGRESS", "1") != "0"


@contextmanager
def bar(description: str, total: int, show: bool = True) -> Iterator[Progress | None]:
    """A progress bar; yields an object with ``advance(task, n)`` or None when hidden."""
    if not show:
        yield None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=True,
    )
    with progress:
        progress.add_task(description, total=total, info="")
        yield progress
