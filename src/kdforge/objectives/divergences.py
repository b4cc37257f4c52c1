"""Plain divergences between teacher and student distributions: reverse KL, generalized JSD, TV."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.objectives.base import register_objective
from kdforge.objectives.functional import kl_rows, rows


def _log_probs(student_logits: Tensor, teacher_logits: Tensor, T: float) -> tuple[Tensor, Tensor]:
    s = F.log_softmax(rows(student_logits) / T, dim=-1)
    t = F.log_softmax(rows(teacher_logits) / T, dim=-1)
    return s, t


# KL(q ‖ p) is +inf where the teacher gives probability 0 and the student does not: -inf is refused.
@register_objective("reverse_kl", masked_teacher=False)
def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    *,
    T: float = 1.0,
) -> Tensor:
    """T²·KL(softmax(s/T) ‖ softmax(t/T)), batch-mean: mode-seeking, the student may drop teacher modes."""
    log_s, log_t = _log_probs(student_logits, teacher_logits, T)
    return kl_rows(log_s, log_t).mean() * T * T


# β = 1 is reverse KL (TRL's convention), infinite at a class of teacher probability 0.
@register_objective("jsd", masked_teacher=lambda p: p["beta"] < 1.0)
def jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    *,
    beta: float = 0.5,
    T: float = 1.0,
) -> Tensor:
    """β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m), m = β·p_t + (1−β)·p_s, batch-mean; β=0/1 give forward/reverse KL."""
    log_s, log_t = _log_probs(student_logits, teacher_logits, T)
    # TRL's convention: the endpoints mean forward / reverse KL, not the limit of the mixture (which is 0).
    if beta == 0:
        return kl_rows(log_t, log_s).mean()
    if beta == 1:
        return kl_rows(log_s, log_t).mean()
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log(1.0 - beta)]), dim=0)
    return (beta * kl_rows(log_t, log_m) + (1.0 - beta) * kl_rows(log_s, log_m)).mean()


@register_objective("tv")
def tv(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    *,
    T: float = 1.0,
) -> Tensor:
    """Total variation ½·Σ|softmax(t/T) − softmax(s/T)|, batch-mean."""
    log_s, log_t = _log_probs(student_logits, teacher_logits, T)
    return 0.5 * (log_t.exp() - log_s.exp()).abs().sum(-1).mean()
