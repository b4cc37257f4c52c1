"""Callbacks: code that runs at the Trainer's boundaries, so strategies plug in without copying the loop.

Boundaries: every micro-batch (``on_batch_end``), every optimizer step (``on_optimizer_step`` — EMA updates,
schedules), every evaluation (``on_evaluate``), every epoch (``on_epoch_end``), every logged record (``on_log``:
trackers), and the start and end of a fit (``on_fit_exit`` also when it fails or is interrupted).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# The Trainer calls these hooks with itself; typed loosely so this file does not import the Trainer back.
Trainer = Any


class Callback:
    """Do-nothing hooks; subclasses override the boundaries they need."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step (after a resume has restored the state)."""

    def on_batch_end(self, trainer: Trainer, out: Any) -> None:
        """After each micro-batch's backward."""

    def on_optimizer_step(self, trainer: Trainer, step: int) -> None:
        """After each optimizer step (``step`` counts optimizer steps from 1)."""

    def on_evaluate(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After each evaluation, with its record."""

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        """After the last optimizer step of each epoch."""

    def on_fit_end(self, trainer: Trainer, result: Any) -> None:
        """After the budget is spent."""

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After each record the Trainer logs (a train line, or one split's evaluation), with the record."""

    def on_fit_exit(self, trainer: Trainer, error: BaseException | None) -> None:
        """When the loop is left, however: finished (None), failed or interrupted (the exception); close files here."""


class TeacherHooks(Callback):
    """Forwards the optimizer-step boundary to every teacher (EMA updates; a no-op for frozen teachers)."""

    def on_optimizer_step(self, trainer: Trainer, step: int) -> None:
        """Call ``teacher.on_optimizer_step`` once per optimizer step, never per micro-batch."""
        for teacher in trainer.distiller.teachers.values():
            teacher.on_optimizer_step(step)


class CallbackList(Callback):
    """Several callbacks called in order."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = list(callbacks)

    def _each(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def on_fit_start(self, trainer: Trainer) -> None:
        self._each("on_fit_start", trainer)

    def on_batch_end(self, trainer: Trainer, out: Any) -> None:
        self._each("on_batch_end", trainer, out)

    def on_optimizer_step(self, trainer: Trainer, step: int) -> None:
        self._each("on_optimizer_step", trainer, step)

    def on_evaluate(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self._each("on_evaluate", trainer, record)

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        self._each("on_epoch_end", trainer, epoch)

    def on_fit_end(self, trainer: Trainer, result: Any) -> None:
        self._each("on_fit_end", trainer, result)

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self._each("on_log", trainer, record)

    def on_fit_exit(self, trainer: Trainer, error: BaseException | None) -> None:
        self._each("on_fit_exit", trainer, error)


class StopRequest:
    """Set by SIGINT/SIGTERM; the loop checks it at the next optimizer-step boundary, saves and stops cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_on_signals(request: StopRequest) -> Iterator[StopRequest]:
    """Turn the first SIGINT/SIGTERM into a stop request; a second SIGINT interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield request  # handlers can only be installed from the main thread
        return

    def handle(signum: int, _frame: Any) -> None:
        if request.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.signum = signum

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
