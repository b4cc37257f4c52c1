"""Small shared pieces of logit math, written once and reused by the objectives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def flatten_logits(logits: Tensor) -> Tensor:
    """View (..., C) logits as (N, C) so that every objective handles (B, C) and (B, S, V) alike."""
    return logits if logits.dim() == 2 else logits.reshape(-1, logits.shape[-1])


def rows(logits: Tensor) -> Tensor:
    """(..., C) logits as float32 (N, C) rows: what every logit objective computes on (bf16/fp16 inputs included)."""
    return flatten_logits(logits).float()


# PyTorch's CPU (log_)softmax over a last dimension below 16 falls back to a scalar loop; over dim 0 of the transposed
# view the same values vectorize across rows (2× faster at 128 × 10: benchmarks/softmax_rows.py).
_SCALAR_FALLBACK_BELOW = 16


def _small_rows(x: Tensor) -> bool:
    return x.dim() == 2 and x.shape[-1] < _SCALAR_FALLBACK_BELOW and x.device.type == "cpu"


def log_softmax_rows(x: Tensor) -> Tensor:
    """log_softmax over the last dim of (N, C) rows, fast on CPU for small C too."""
    return torch.log_softmax(x.t(), dim=0).t() if _small_rows(x) else torch.log_softmax(x, dim=-1)


def softmax_rows(x: Tensor) -> Tensor:
    """softmax over the last dim of (N, C) rows, fast on CPU for small C too."""
    return torch.softmax(x.t(), dim=0).t() if _small_rows(x) else torch.softmax(x, dim=-1)


def kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-row KL(p || q) from log-probabilities, safe where p is zero."""
    p = log_p.exp()
    # Where p is 0 (a masked class, log p = -inf) the term is 0, not 0 * -inf = NaN.
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Per-row cross-entropy of ``logits`` against a probability target."""
    return -(target_probs * F.log_softmax(logits, dim=-1)).sum(-1)


IGNORE = -100  # the label of a row without a target, as in F.cross_entropy


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """One-hot rows for integer ``labels``; a row labelled -100 gets class 0's row (``labelled_mean`` drops it)."""
    return F.one_hot(labels.reshape(-1).long().clamp(min=0), num_classes).to(dtype)


def labelled_mean(per_row: Tensor, labels: Tensor) -> Tensor:
    """Mean of per-row values over the rows that have a label (not -100), as F.cross_entropy's ignore_index does.

    No host sync (a weighted sum, not a boolean index); a batch without any label is 0/0 = NaN, as cross-entropy's.
    """
    keep = (labels.reshape(-1) != IGNORE).to(per_row.dtype)
    return (per_row * keep).sum() / keep.sum()
