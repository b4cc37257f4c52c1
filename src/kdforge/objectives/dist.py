"""Huang et al. NeurIPS 2022 (DIST): match the teacher's class relations by correlation, not exactly."""

from __future__ import annotations

from torch import Tensor

from kdforge.objectives.base import register_objective
from kdforge.objectives.functional import rows


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)


@register_objective("dist")
def dist(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    T: float = 1.0,
) -> Tensor:
    """T²·(β·(1 − Pearson across classes) + γ·(1 − Pearson across the batch)) of the softmax outputs."""
    y_s = (rows(student_logits) / T).softmax(-1)
    y_t = (rows(teacher_logits) / T).softmax(-1)
    inter = 1.0 - _pearson_rows(y_s, y_t).mean()
    intra = 1.0 - _pearson_rows(y_s.T, y_t.T).mean()
    return T * T * (beta * inter + gamma * intra)
