"""Born-again networks' confidence-weighted-by-teacher-max loss (CWTM, Furlanello et al. 2018)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdforge.objectives.base import register_objective
from kdforge.objectives.functional import IGNORE, log_softmax_rows, rows, softmax_rows


@register_objective("cwtm", labels=True)
def cwtm(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy with the labels, each sample weighted by the teacher's max probability over the batch's sum."""
    y = labels.reshape(-1).long()
    valid = y != IGNORE
    confidence = softmax_rows(rows(teacher_logits)).amax(-1) * valid
    nll = F.nll_loss(log_softmax_rows(rows(student_logits)), y.clamp(min=0), reduction="none") * valid
    # Weights sum to one over the labelled rows: a batch of confident and unsure samples keeps CE's scale.
    return (confidence * nll).sum() / confidence.sum().clamp(min=1e-12)
