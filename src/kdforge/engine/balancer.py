"""Balancer: combine named loss terms into one scalar with static weights and linear warm-ups (steps or epochs).

The schedule is a pure function of (step, epoch), so a resumed run restores it from the step alone.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping

import torch
from torch import Tensor


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear ramp from 0 to 1 over ``warmup_steps`` optimizer steps (1 when there is no warm-up)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


class Balancer:
    """Weights per term; ``combine`` returns the total and the weighted value of every term."""

    def __init__(
        self,
        weights: Mapping[str, float],
        warmup_steps: Mapping[str, int] | None = None,
        warmup_epochs: Mapping[str, float] | None = None,
    ):
        self.weights = dict(weights)
        self.warmup_steps = dict(warmup_steps or {})
        self.warmup_epochs = dict(warmup_epochs or {})

    def weight(self, name: str, step: int, epoch: float | None = None) -> float:
        """Effective weight of ``name`` at ``step`` (and fractional ``epoch``, for epoch warm-ups such as DKD's)."""
        w = self.weights[name] * warmup_factor(step, self.warmup_steps.get(name, 0))
        epochs = self.warmup_epochs.get(name, 0.0)
        if epochs > 0 and epoch is not None:
            w *= min(epoch / epochs, 1.0)
        return w

    def combine(
        self, terms: Mapping[str, Tensor], step: int, epoch: float | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted sum of ``terms``; the second value maps each name to its weighted term."""
        weighted = {}
        for name, value in terms.items():
            w = self.weight(name, step, epoch)
            # Every op here runs each step and is recorded for backward; skip the ones that change nothing.
            weighted[name] = value if w == 1.0 else value * w
        if not weighted:
            return torch.zeros(()), weighted
        return functools.reduce(operator.add, weighted.values()), weighted
