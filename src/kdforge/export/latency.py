"""Latency of the ONNX artifact against the PyTorch student: same inputs, batch 1 and 256, medians after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

BATCH_SIZES = (1, 256)
Runner = Callable[[dict[str, Tensor]], object]


def cycled(inputs: dict[str, Tensor], rows: int) -> dict[str, Tensor]:
    """``rows`` rows of every input, cycling the real rows when there are fewer."""
    n = len(next(iter(inputs.values())))
    index = torch.arange(rows) % n
    return {k: v[index].contiguous() for k, v in inputs.items()}


def median_ms(
    runners: dict[str, Runner],
    batch: dict[str, Tensor],
    warmup: int = 3,
    repeats: int = 20,
    max_seconds: float = 2.0,
) -> dict[str, float]:
    """Median ms per call of each runner on ``batch``, after ``warmup`` calls each.

    The runners take turns call by call, so a change of machine load (a shared machine) hits both alike; at least 3
    rounds, then rounds until ``repeats`` or ``max_seconds``.
    """
    for run in runners.values():
        for _ in range(warmup):
            run(batch)
    times: dict[str, list[float]] = {name: [] for name in runners}
    start = time.perf_counter()
    for i in range(max(repeats, 3)):
        if i >= 3 and time.perf_counter() - start > max_seconds:
            break
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(batch)
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def compare_latency(
    runners: dict[str, Runner], inputs: dict[str, Tensor], batch_sizes: tuple[int, ...] = BATCH_SIZES
) -> dict[str, dict[str, float]]:
    """``{"batch_1": {"onnxruntime": ms, "pytorch": ms}, "batch_256": {...}}`` on real rows of ``inputs``.

    Thread settings are left as they are (torch's and onnxruntime's defaults), as a user would run them.
    """
    return {f"batch_{size}": median_ms(runners, cycled(inputs, size)) for size in batch_sizes}
