"""The full classification record of one model on a test split: scalar metrics, per class, confusion, reliability."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.evaluate.metrics import (
    _check_logits_labels,
    _check_pair,
    accuracy,
    agreement,
    brier_score,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
    mean_kl,
    nll,
    top_k_accuracy,
)

N_BINS = 15  # the reliability diagram's bins, as the ECE's


def row_kl(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """KL(softmax(t) ‖ softmax(s)) of every row, float64 (N,)."""
    _check_pair(student_logits, teacher_logits)
    log_p = F.log_softmax(teacher_logits.double(), dim=-1)
    log_q = F.log_softmax(student_logits.double(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _group_mean(values: Tensor, labels: Tensor, num_classes: int) -> list[float | None]:
    """Mean of ``values`` per true class; None for a class with no sample."""
    count = torch.bincount(labels, minlength=num_classes).double()
    total = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, values.double().cpu())
    return [float(total[c] / count[c]) if count[c] > 0 else None for c in range(num_classes)]


def per_class(
    logits: Tensor, labels: Tensor, class_names: Sequence[str] | None = None, teacher_logits: Tensor | None = None
) -> list[dict[str, Any]]:
    """One entry per class (grouped by true label): support, accuracy, and agreement and mean KL with the teacher.

    A class without test samples has accuracy, agreement and KL None; agreement and KL are None without a teacher.
    """
    _check_logits_labels(logits, labels)
    n_classes = logits.shape[1]
    y = labels.long().cpu()
    predicted = logits.argmax(-1).cpu()
    support = torch.bincount(y, minlength=n_classes)
    acc = _group_mean((predicted == y).double(), y, n_classes)
    agree: list[float | None] = [None] * n_classes
    kl: list[float | None] = [None] * n_classes
    if teacher_logits is not None:
        agree = _group_mean((predicted == teacher_logits.argmax(-1).cpu()).double(), y, n_classes)
        kl = _group_mean(row_kl(teacher_logits, logits).cpu(), y, n_classes)
    names = list(class_names) if class_names and len(class_names) == n_classes else [str(c) for c in range(n_classes)]
    return [
        {"class": names[c], "support": int(support[c]), "accuracy": acc[c], "agreement": agree[c], "kl": kl[c]}
        for c in range(n_classes)
    ]


def reliability_bins(logits: Tensor, labels: Tensor, n_bins: int = N_BINS) -> dict[str, list[Any]]:
    """Equal-width confidence bins (lo, hi] as the ECE's: edges, count, mean confidence and accuracy (None if empty)."""
    _check_logits_labels(logits, labels)
    probs = F.softmax(logits.double(), dim=-1)
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels.to(logits.device)).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    bins = torch.bucketize(confidence.cpu(), edges[1:-1], right=False)
    count = torch.bincount(bins, minlength=n_bins)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, confidence.cpu())
    correct_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, correct.cpu())
    n = [int(c) for c in count]
    return {
        "edges": [float(e) for e in edges],
        "count": n,
        "confidence": [float(conf_sum[b] / n[b]) if n[b] else None for b in range(n_bins)],
        "accuracy": [float(correct_sum[b] / n[b]) if n[b] else None for b in range(n_bins)],
    }


def classification_record(
    logits: Tensor, labels: Tensor, teacher_logits: Tensor | None = None, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """``metrics``, ``per_class``, ``confusion`` and ``reliability`` of one model's test logits (the eval record)."""
    _check_logits_labels(logits, labels)
    with_teacher = teacher_logits is not None
    metrics = {
        "accuracy": accuracy(logits, labels),
        "top5": top_k_accuracy(logits, labels, 5),
        "macro_f1": macro_f1(logits, labels),
        "nll": nll(logits, labels),
        "brier": brier_score(logits, labels),
        "ece": expected_calibration_error(logits, labels, N_BINS),
        "agreement": agreement(logits, teacher_logits) if with_teacher else None,
        "kl": mean_kl(teacher_logits, logits) if with_teacher else None,
        "n": int(labels.shape[0]),
    }
    confusion = confusion_matrix(logits.argmax(-1), labels, logits.shape[1])
    return {
        "metrics": metrics,
        "per_class": per_class(logits, labels, class_names, teacher_logits),
        "confusion": confusion.tolist(),
        "reliability": reliability_bins(logits, labels, N_BINS),
    }
