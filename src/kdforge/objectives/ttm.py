"""Zheng & Yang ICLR 2024 (Transformed Teacher Matching): temperature on the teacher only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.objectives.base import register_objective
from kdforge.objectives.functional import kl_rows, rows


def _transformed_teacher(teacher_logits: Tensor, T: float) -> tuple[Tensor, Tensor]:
    # softmax(t)^(1/T) in log space: the power of a tiny probability underflows otherwise.
    log_q = F.log_softmax(rows(teacher_logits), dim=-1) / T
    log_norm = torch.logsumexp(log_q, dim=-1, keepdim=True)
    return log_q - log_norm, log_norm.squeeze(-1).exp()


@register_objective("ttm")
def ttm(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    *,
    T: float = 4.0,
) -> Tensor:
    """KL(softmax(t)^(1/T) / Σ softmax(t)^(1/T) ‖ softmax(s)), batch-mean; the student stays at T=1."""
    log_p_t, _ = _transformed_teacher(teacher_logits, T)
    log_p_s = F.log_softmax(rows(student_logits), dim=-1)
    return kl_rows(log_p_t, log_p_s).mean()


@register_objective("wttm")
def wttm(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    *,
    T: float = 4.0,
) -> Tensor:
    """TTM with each row weighted by Σ softmax(t)^(1/T), the teacher's power sum, batch-mean."""
    log_p_t, norm = _transformed_teacher(teacher_logits, T)
    log_p_s = F.log_softmax(rows(student_logits), dim=-1)
    return (norm * kl_rows(log_p_t, log_p_s)).mean()
