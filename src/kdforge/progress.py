"""Say what a run is doing: a status line for each long step and a bar for loops, on the main process only.

On a terminal a step is a spinner on stderr (nested steps show the innermost one) and a loop a bar. In a log
(stderr not a terminal) a step is one plain line at its start, ``· loading data fashion_mnist``, a line every
``LOG_EVERY_S`` seconds while it runs (a bar's count, or the time so far), and one with its time when it took over
``SLOW_S`` seconds. ``KDFORGE_PROGRESS=0`` silences all of it, as do processes other than rank 0.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.status import Status

console = Console(stderr=True)

SLOW_S = 2.0  # a step that took longer reports its time when it ends
LOG_EVERY_S = 15.0  # in a log, a running step says where it is when nothing was said for this long
START_MARK = "·"
DONE_MARK = "✓"


@dataclass
class _Step:
    message: str
    started: float
    detail: Callable[[], str] | None = None  # a bar's count, for the log's heartbeat


_lock = threading.Lock()
_steps: list[_Step] = []  # the open steps, innermost last
_spinner: list[Status] = []  # the one spinner shown for all of them on a terminal (rich < 14 allows one live display)
_beat: list[threading.Event] = []  # set to stop the log's heartbeat thread while steps are open
_last_said = [0.0]


def main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch, or a single process (read from the launcher's environment)."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def enabled(main: bool = True) -> bool:
    """Progress is shown on the main process unless KDFORGE_PROGRESS=0."""
    return main and os.environ.get("KDFORGE_PROGRESS", "1") != "0"


def _say(text: str) -> None:
    _last_said[0] = time.perf_counter()
    # soft_wrap: a long step name stays one line in a log; no markup, so names with [brackets] print as they are.
    console.print(text, soft_wrap=True, highlight=False, markup=False, style="dim" if console.is_terminal else None)


def _heartbeat(stop: threading.Event) -> None:
    """In a log: when nothing was said for ``LOG_EVERY_S`` seconds, say where the innermost step is."""
    while not stop.wait(min(1.0, LOG_EVERY_S)):
        if time.perf_counter() - _last_said[0] < LOG_EVERY_S:
            continue
        # Said under the lock: a step closing meanwhile waits, so its end line never precedes a heartbeat of it.
        with _lock:
            step = _steps[-1] if _steps else None
            if step is not None:
                so_far = f"{step.message}: {time.perf_counter() - step.started:.0f} s so far"
                _say(f"{START_MARK} {step.detail() if step.detail else so_far}")


def _open(step: _Step) -> None:
    if console.is_terminal:
        if _spinner:
            _spinner[0].update(step.message)
        else:
            spinner = Status(step.message, console=console)
            spinner.start()
            _spinner.append(spinner)
    else:
        _say(f"{START_MARK} {step.message}")
        if not _beat:
            _beat.append(threading.Event())
            threading.Thread(target=_heartbeat, args=(_beat[0],), name="kdforge-progress", daemon=True).start()
    with _lock:
        _steps.append(step)


def _close() -> None:
    with _lock:
        _steps.pop()
        inner = _steps[-1].message if _steps else None
    if _spinner:
        if inner is not None:
            _spinner[0].update(inner)
        else:
            _spinner.pop().stop()
    if _beat and inner is None:
        _beat.pop().set()


@contextmanager
def _step(message: str, show: bool, detail: Callable[[], str] | None = None) -> Iterator[None]:
    if not enabled(show):
        yield
        return
    step = _Step(message, time.perf_counter(), detail)
    _open(step)
    ok = False
    try:
        yield
        ok = True
    finally:
        _close()
        elapsed = time.perf_counter() - step.started
        if ok and elapsed >= SLOW_S:
            _say(f"{DONE_MARK} {message} ({elapsed:.1f} s)")


def status(message: str, show: bool | None = None) -> AbstractContextManager[None]:
    """Show ``message`` while the block runs (spinner or log lines), then its time if it was slow; ``show=False``
    (e.g. not the main process) keeps it silent; by default only rank 0 speaks."""
    return _step(message, main_process() if show is None else show)


@contextmanager
def _spinner_paused() -> Iterator[None]:
    """Stop the step spinner while another live display (a bar) runs; rich < 14 refuses two at once."""
    if not _spinner:
        yield
        return
    _spinner[0].stop()
    try:
        yield
    finally:
        if _spinner:
            _spinner[0].start()


def _count(progress: Progress) -> str:
    task = progress.tasks[0]
    info = task.fields.get("info") or ""
    return f"{task.description.strip()}: {task.completed:.0f}/{task.total or 0:.0f} {info}".rstrip()


@contextmanager
def bar(description: str, total: int, show: bool = True) -> Iterator[Progress | None]:
    """A progress bar; yields an object with ``advance(task, n)`` or None when hidden. In a log: a line at its start,
    its count every ``LOG_EVERY_S`` seconds and its time at the end."""
    if not enabled(show):
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
    progress.add_task(description, total=total, info="")
    if console.is_terminal:
        with _spinner_paused(), progress:
            yield progress
        return
    # Never started in a log: a live display there prints only its last frame, and this one is transient.
    with _step(f"{description.strip()} ({total} steps)", True, lambda: _count(progress)):
        yield progress
