"""Classification metrics over logits: pure functions from tensors to Python floats."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.errors import ShapeMismatchError


def _check_logits_labels(logits: Tensor, labels: Tensor) -> None:
    """Raise unless ``logits`` is (N, C) with N > 0 and ``labels`` is (N,)."""
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ShapeMismatchError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match: "
            "expected logits (N, C) and labels (N,)"
        )
    if logits.shape[0] == 0:
        raise ValueError("no samples: logits and labels are empty")


def _check_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    """Raise unless student and teacher logits are both (N, C) with the same shape and N > 0."""
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ShapeMismatchError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} do not match: expected both (N, C)"
        )
    if student_logits.shape[0] == 0:
        raise ValueError("no samples: logits are empty")


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of rows whose arg-max equals the label."""
    _check_logits_labels(logits, labels)
    return (logits.argmax(-1) == labels.to(logits.device)).double().mean().item()


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Fraction of rows where the student's and the teacher's top-1 classes coincide."""
    _check_pair(student_logits, teacher_logits)
    return (student_logits.argmax(-1) == teacher_logits.argmax(-1)).double().mean().item()


def mean_kl(teacher_logits: Tensor, student_logits: Tensor, T: float = 1.0) -> float:
    """Mean over rows of KL(softmax(t / T) || softmax(s / T))."""
    _check_pair(student_logits, teacher_logits)
    # float64 and log_softmax keep near-identical distributions from giving tiny negative values.
    log_p = F.log_softmax(teacher_logits.double() / T, dim=-1)
    log_q = F.log_softmax(student_logits.double() / T, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()


def nll(logits: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits)."""
    _check_logits_labels(logits, labels)
    return F.cross_entropy(logits.double(), labels.to(logits.device).long()).item()


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE over equal-width confidence bins on (0, 1], as in Guo et al. (2017)."""
    _check_logits_labels(logits, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    probs = F.softmax(logits.double(), dim=-1)
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels.to(logits.device)).double()
    # Bins are (lo, hi]: bucketize with right=False on the inner edges puts a confidence equal to
    # an edge in the lower bin and a confidence of exactly 1.0 in the last bin.
    inner_edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=logits.device)[1:-1]
    bins = torch.bucketize(confidence, inner_edges, right=False)
    count = torch.zeros(n_bins, dtype=torch.float64, device=logits.device).index_add_(
        0, bins, torch.ones_like(confidence)
    )
    conf_sum = torch.zeros_like(count).index_add_(0, bins, confidence)
    correct_sum = torch.zeros_like(count).index_add_(0, bins, correct)
    # Σ_b |B_b|/N · |acc_b − conf_b| equals Σ_b |Σ correct − Σ conf| / N, which avoids dividing by empty bins.
    return ((correct_sum - conf_sum).abs().sum() / confidence.shape[0]).item()


def classification_metrics(logits: Tensor, labels: Tensor, teacher_logits: Tensor | None = None) -> dict[str, float]:
    """Accuracy, NLL and ECE, plus agreement and KL to the teacher when its logits are given."""
    metrics = {
        "accuracy": accuracy(logits, labels),
        "nll": nll(logits, labels),
        "ece": expected_calibration_error(logits, labels),
    }
    if teacher_logits is not None:
        metrics["agreement"] = agreement(logits, teacher_logits)
        metrics["kl"] = mean_kl(teacher_logits, logits)
    return metrics


def top_k_accuracy(logits: Tensor, labels: Tensor, k: int = 5) -> float | None:
    """Fraction of rows whose label is among the ``k`` largest logits; None when there are fewer than ``k`` classes."""
    _check_logits_labels(logits, labels)
    if logits.shape[1] < k:
        return None
    top = logits.topk(k, dim=-1).indices
    return (top == labels.to(logits.device)[:, None]).any(-1).double().mean().item()


def confusion_matrix(predicted: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    flat = labels.long().cpu() * num_classes + predicted.long().cpu()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def macro_f1(logits: Tensor, labels: Tensor) -> float:
    """Unweighted mean of per-class F1 = 2TP / (2TP + FP + FN) over the classes present in labels or predictions.

    As scikit-learn's ``f1_score(average="macro")``: classes absent from both labels and predictions are excluded
    (its default ``labels=unique_labels(y_true, y_pred)``), so every class averaged has 2TP + FP + FN > 0 and its
    ``zero_division`` setting never applies; a class only predicted, or only labelled, counts with F1 = 0.
    """
    _check_logits_labels(logits, labels)
    cm = confusion_matrix(logits.argmax(-1), labels, logits.shape[1]).double()
    tp = cm.diagonal()
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    den = 2 * tp + fp + fn
    present = den > 0
    return (2 * tp[present] / den[present]).mean().item()


def brier_score(logits: Tensor, labels: Tensor) -> float:
    """Mean over rows of Σ_c (p_c − onehot_c)², p = softmax(logits) (0 is perfect, 2 the worst)."""
    _check_logits_labels(logits, labels)
    probs = F.softmax(logits.double(), dim=-1)
    onehot = F.one_hot(labels.to(logits.device).long(), logits.shape[1]).double()
    return ((probs - onehot) ** 2).sum(-1).mean().item()
