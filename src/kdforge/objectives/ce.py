"""Cross-entropy with the labels (label smoothing optional); the teacher is not used."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdforge.objectives.base import register_objective
from kdforge.objectives.functional import rows


@register_objective("ce", teacher=False, labels=True)
def cross_entropy(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> Tensor:
    """Cross-entropy with the ground-truth labels, optionally label-smoothed."""
    return F.cross_entropy(
        rows(student_logits),
        labels.reshape(-1).long(),
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
    )
