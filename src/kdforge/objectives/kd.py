"""Hinton et al. 2015: match the teacher's temperature-softened distribution, scaled by T²."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdforge.objectives.base import register_objective
from kdforge.objectives.functional import flatten_logits, kl_rows


@register_objective("kd", labels=lambda p: p["alpha"] < 1.0)
def kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    *,
    T: float = 4.0,
    alpha: float = 1.0,
) -> Tensor:
    """(1-α)·CE(y, s) + α·T²·KL(softmax(t/T) ‖ softmax(s/T)), batch-mean; α=1 gives the pure KD term."""
    s = flatten_logits(student_logits).float()
    t = flatten_logits(teacher_logits).float()
    soft = kl_rows(F.log_softmax(t / T, dim=-1), F.log_softmax(s / T, dim=-1)).mean() * T * T
    if alpha >= 1.0:
        return soft
    return (1.0 - alpha) * F.cross_entropy(s, labels.reshape(-1).long()) + alpha * soft
