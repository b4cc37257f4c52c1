"""Sun et al. CVPR 2024 (logit standardization): KD on z-scored logits, free of the teacher's scale."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdforge.objectives.base import register_objective
from kdforge.objectives.functional import kl_rows, rows


def _standardize(z: Tensor) -> Tensor:
    return (z - z.mean(-1, keepdim=True)) / (1e-7 + z.std(-1, keepdim=True))


# Standardizing a row that holds -inf is undefined (NaN gradients): -inf teacher logits are refused.
@register_objective("lskd", masked_teacher=False)
def lskd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    *,
    T: float = 2.0,
) -> Tensor:
    """T²·KL(softmax(ẑ_t/T) ‖ softmax(ẑ_s/T)) on row-standardized logits ẑ = (z − mean)/std, batch-mean."""
    s = _standardize(rows(student_logits))
    t = _standardize(rows(teacher_logits))
    return kl_rows(F.log_softmax(t / T, dim=-1), F.log_softmax(s / T, dim=-1)).mean() * T * T
