"""Zhao et al. CVPR 2022 (Decoupled KD): the KD loss split into target-class and non-target-class terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.objectives.base import register_objective
from kdforge.objectives.functional import kl_rows, labelled_mean, one_hot, rows

# As in mdistiller: subtracting this from the target logit removes the target class from the softmax.
_MASK = 1000.0


def _binary_log_probs(z: Tensor, gt: Tensor) -> Tensor:
    # Log-space [log p_gt, log(1 - p_gt)], so a confident row does not take log(0).
    total = torch.logsumexp(z, dim=-1)
    target = (z * gt).sum(-1) - total
    other = torch.logsumexp(z - _MASK * gt, dim=-1) - total
    return torch.stack([target, other], dim=-1)


def _tckd(s: Tensor, t: Tensor, gt: Tensor) -> Tensor:
    return kl_rows(_binary_log_probs(t, gt), _binary_log_probs(s, gt))


def _nckd(s: Tensor, t: Tensor, gt: Tensor) -> Tensor:
    return kl_rows(F.log_softmax(t - _MASK * gt, dim=-1), F.log_softmax(s - _MASK * gt, dim=-1))


# Its one-hot products (-inf · 0) make a NaN gradient at masked classes: -inf teacher logits are refused.
@register_objective("dkd", labels=True, masked_teacher=False)
def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    T: float = 4.0,
) -> Tensor:
    """(α·TCKD + β·NCKD)·T², mean over labelled rows (-100: left out); warm-up via the term's ``warmup_epochs``."""
    s = rows(student_logits) / T
    t = rows(teacher_logits) / T
    gt = one_hot(labels, s.shape[-1], s.dtype)
    return labelled_mean(alpha * _tckd(s, t, gt) + beta * _nckd(s, t, gt), labels) * T * T
