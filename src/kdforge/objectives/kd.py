"""Hinton et al. 2015: match the teacher's temperature-softened distribution, scaled by T²."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdforge.objectives.base import register_objective
from kdforge.objectives.functional import flatten_logits


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
    # One fused kl_div kernel (xlogy keeps p_t = 0 safe) instead of a chain of elementwise ops: this term runs on
    # every step, and on small students its op count is a visible share of the step.
    soft = F.kl_div(F.log_softmax(s / T, dim=-1), F.softmax(t / T, dim=-1), reduction="batchmean") * (T * T)
    if alpha >= 1.0:
        return soft
    return (1.0 - alpha) * F.cross_entropy(s, labels.reshape(-1).long()) + alpha * soft
