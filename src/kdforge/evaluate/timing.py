"""Timing repeated calls: wall-clock times after warm-up, their percentiles, and how much CPU the process got.

``cpu_share`` is the process's CPU time (``time.process_time``, all its threads) divided by the wall time of the
timed calls. A forward on the CPU keeps at least one thread busy, so a share well below 1 means the process waited
for a core: other work was running on the machine and the latencies are inflated. ``BUSY_SHARE`` is the threshold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

BUSY_SHARE = 0.8


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Timed:
    """Seconds of each timed call, and the CPU seconds and wall seconds spent over all of them."""

    times: list[float]
    cpu_seconds: float
    wall_seconds: float

    @property
    def median(self) -> float:
        """Median seconds per call."""
        return percentile(self.times, 50)

    @property
    def p95(self) -> float:
        """95th percentile of seconds per call."""
        return percentile(self.times, 95)

    @property
    def cpu_share(self) -> float:
        """Process CPU time over wall time during the timed calls (below ``BUSY_SHARE``: the machine was busy)."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else math.nan


def time_calls(
    call: Callable[[], Any],
    warmup: int = 3,
    repeats: int = 30,
    min_repeats: int = 5,
    max_seconds: float = 1.0,
    sync: Callable[[], None] | None = None,
) -> Timed:
    """Time ``call()`` after ``warmup`` untimed calls: ``min_repeats`` at least, then until ``repeats`` or
    ``max_seconds``; ``sync`` (e.g. a CUDA synchronize) is run inside each timed interval."""
    done = sync or (lambda: None)
    for _ in range(warmup):
        call()
    done()
    times: list[float] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(max(repeats, min_repeats)):
        if i >= min_repeats and time.perf_counter() - wall0 > max_seconds:
            break
        t0 = time.perf_counter()
        call()
        done()
        times.append(time.perf_counter() - t0)
    return Timed(times, time.process_time() - cpu0, time.perf_counter() - wall0)
