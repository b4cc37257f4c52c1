"""The speed and size profile of one model in the evaluation record: latency at batch 1 and N, throughput, FLOPs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from kdforge.evaluate.timing import BUSY_SHARE, Timed, time_calls

Runner = Callable[[dict[str, Tensor]], Any]


def cycled(inputs: dict[str, Tensor], rows: int) -> dict[str, Tensor]:
    """``rows`` rows of every input, cycling the real rows when there are fewer."""
    n = len(next(iter(inputs.values())))
    if n == 0:
        raise ValueError("no input rows to time the model on")
    index = torch.arange(rows) % n
    return {k: v[index].contiguous() for k, v in inputs.items()}


def speed_profile(
    run: Runner,
    inputs: dict[str, Tensor],
    batch_size: int,
    sync: Callable[[], None] | None = None,
    **timing: Any,
) -> dict[str, Any]:
    """Per-sample latency (median and p95 ms, warm-up excluded) at batch 1 and ``batch_size``, throughput at
    ``batch_size`` (samples/s from the median), and the CPU share of the timed calls (the lower of the two)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    timed: dict[int, Timed] = {}
    for size in (1, batch_size):
        batch = cycled(inputs, size)
        timed[size] = time_calls(lambda b=batch: run(b), sync=sync, **timing)
    one, big = timed[1], timed[batch_size]
    share = min(one.cpu_share, big.cpu_share)
    return {
        "latency_ms_b1": 1e3 * one.median,
        "latency_ms_b1_p95": 1e3 * one.p95,
        "latency_ms_bN": 1e3 * big.median / batch_size,
        "latency_ms_bN_p95": 1e3 * big.p95 / batch_size,
        "batch_size": batch_size,
        "throughput_per_s": batch_size / big.median,
        "cpu_share": share,
        "busy": bool(share < BUSY_SHARE),
    }


def full_profile(
    run: Runner,
    inputs: dict[str, Tensor],
    batch_size: int,
    params: int | None,
    size_bytes: int | None,
    flops_per_sample: int | None,
    sync: Callable[[], None] | None = None,
    **timing: Any,
) -> dict[str, Any]:
    """The record's ``profile``: params, size on disk, FLOPs per sample, then ``speed_profile``."""
    return {
        "params": params,
        "size_bytes": size_bytes,
        "flops_per_sample": flops_per_sample,
        **speed_profile(run, inputs, batch_size, sync, **timing),
    }
