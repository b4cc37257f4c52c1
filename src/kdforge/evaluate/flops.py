"""Floating-point operations of one forward, counted by torch's FlopCounterMode (matmuls and convolutions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(call: Callable[[], Any]) -> int:
    """FLOPs of ``call()`` as torch counts them: 2·m·n·k per matmul, convolutions likewise; elementwise ops are free."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        call()
    return int(counter.get_total_flops())
