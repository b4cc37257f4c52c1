"""Kim et al. ICCV 2021 (Progressive self-KD): soften labels with the model's own last-epoch predictions."""

from __future__ import annotations

from torch import Tensor

from kdforge.objectives.base import register_objective
from kdforge.objectives.functional import labelled_mean, one_hot, rows, soft_cross_entropy


@register_objective("pskd", labels=True)
def pskd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha_T: float = 0.8,
    progress: float | None = None,
) -> Tensor:
    """CE(s, (1−α_t)·onehot(y) + α_t·softmax(last-epoch logits)), α_t = alpha_T·progress; mean over labelled rows."""
    s = rows(student_logits)
    t = rows(teacher_logits)
    # Without progress the schedule is unknown; the final (largest) weight is the documented default.
    alpha = alpha_T if progress is None else alpha_T * progress
    target = (1.0 - alpha) * one_hot(labels, s.shape[-1], s.dtype) + alpha * t.softmax(-1)
    # A row labelled -100 has no target to soften: it is left out, as cross-entropy leaves it out.
    return labelled_mean(soft_cross_entropy(s, target), labels)
