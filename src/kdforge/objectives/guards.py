"""Guards on what enters an objective: teacher values, label range, shapes and devices (docs/tensor-guards.md).

Cheap on the hot path: a signal is reduced to three booleans on its own device from per-row sums and maxima (no
full-size mask is made), a step's booleans are read back in one transfer, and the exact counts a message quotes are
computed only once a flag is set. A flag is a fast filter, never the verdict: a float32 row sum can overflow on
huge finite logits, so ``*_problem`` recounts exactly before anything is refused.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kdforge.errors import NonFiniteSignalError, ShapeMismatchError
from kdforge.objectives.functional import IGNORE
from kdforge.signals import DenseSignal, HeadSignal, SparseSignal

# Positions in the flags of a logit signal.
BAD, MASKED, EMPTY = 0, 1, 2
Signal = Tensor | DenseSignal | SparseSignal | HeadSignal


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _row_flags(total: Tensor, peak: Tensor) -> Tensor:
    """(3,) bool from per-row sums and maxima: NaN or +inf somewhere, -inf somewhere, a row that is -inf throughout.

    A row sum is NaN for a NaN (or +inf next to -inf), +inf for a +inf, -inf for a -inf among finite values.
    """
    bad = (total.isnan() | (total == math.inf)).any()
    return torch.stack([bad, (total == -math.inf).any(), (peak == -math.inf).any()])


def _sparse_tail(signal: SparseSignal) -> Tensor | None:
    # With k = V there are no tail ids: the tail is ignored (and -inf there means nothing).
    return signal.tail if signal.ids.shape[-1] < signal.vocab_size else None


def logit_flags(signal: Signal, classes: int | None = None) -> Tensor:
    """(3,) bool flags (BAD, MASKED, EMPTY) of a teacher's logits; ``classes``: only the first columns are compared."""
    if isinstance(signal, DenseSignal):
        signal = signal.logits
    if isinstance(signal, HeadSignal):
        # Hidden states have no "probability 0" meaning: any non-finite value is bad.
        return torch.cat([value_flags(signal.hidden), torch.zeros(2, dtype=torch.bool, device=signal.hidden.device)])
    if isinstance(signal, SparseSignal):
        lp = signal.logprobs
        total, peak = lp.sum(-1, dtype=_acc(lp)), lp.amax(-1).to(_acc(lp))
        tail = _sparse_tail(signal)
        if tail is not None:
            total, peak = total + tail.to(total.dtype), torch.maximum(peak, tail.to(peak.dtype))
        return _row_flags(total, peak)
    x = signal if classes is None else signal[..., :classes]
    return _row_flags(x.sum(-1, dtype=_acc(x)), x.amax(-1))


def value_flags(x: Tensor) -> Tensor:
    """(1,) bool: whether ``x`` (features, hidden states) holds a NaN or ±inf, from one float32 sum."""
    total = x.sum(dtype=_acc(x))
    return (~torch.isfinite(total)).reshape(1)


def label_flags(labels: Tensor, classes: int, ignore: int = IGNORE) -> Tensor:
    """(1,) bool: whether a label is outside [0, classes) and is not ``ignore``."""
    y = labels.reshape(-1)
    return (((y >= classes) | (y < 0)) & (y != ignore)).any().reshape(1)


def _device(signal: Signal) -> torch.device:
    if isinstance(signal, Tensor):
        return signal.device
    if isinstance(signal, DenseSignal):
        return signal.logits.device
    if isinstance(signal, HeadSignal):
        return signal.hidden.device
    return signal.logprobs.device


def _count(x: Tensor) -> tuple[int, int, int]:
    """Exact (NaN, +inf, -inf) counts of ``x``."""
    return int(x.isnan().sum()), int((x == math.inf).sum()), int((x == -math.inf).sum())


def _parts(signal: Signal, classes: int | None) -> tuple[list[Tensor], Tensor | None, tuple[int, ...]]:
    """(tensors whose values are the teacher's, per-row maxima or None, shape to quote) of a signal."""
    if isinstance(signal, DenseSignal):
        signal = signal.logits
    if isinstance(signal, HeadSignal):
        return [signal.hidden], None, tuple(signal.hidden.shape)
    if isinstance(signal, SparseSignal):
        tail = _sparse_tail(signal)
        peak = signal.logprobs.amax(-1)
        parts = [signal.logprobs]
        if tail is not None:
            parts.append(tail)
            peak = torch.maximum(peak, tail.to(peak.dtype))
        return parts, peak, tuple(signal.logprobs.shape)
    x = signal if classes is None else signal[..., :classes]
    return [x], x.amax(-1), tuple(x.shape)


def logit_problem(where: str, what: str, signal: Signal, masked_ok: bool, classes: int | None = None) -> str | None:
    """The one-line reason ``signal`` cannot be used by objective ``where`` (None when it can); counts exactly."""
    parts, peak, shape = _parts(signal, classes)
    nan, pos, neg = (sum(c) for c in zip(*(_count(p) for p in parts), strict=True))
    kind = "hidden states" if isinstance(signal, HeadSignal) else what
    if nan or pos or (neg and peak is None):
        inf = f", {neg} -inf" if peak is None else ""
        return (
            f"{where}: {kind} hold {nan + pos + (neg if peak is None else 0)} non-finite values ({nan} NaN, {pos} "
            f"+inf{inf}) in shape {shape}; expected finite values (-inf only for a class of probability 0) — "
            "check the teacher's precision (fp16 overflows above 65504) and its inputs"
        )
    empty = 0 if peak is None else int((peak == -math.inf).sum())
    if empty:
        return (
            f"{where}: {empty} rows of {kind} are -inf throughout (shape {shape}); expected at least one finite "
            "logit per row (probability 0 everywhere is no distribution)"
        )
    if neg and not masked_ok:
        return (
            f"{where}: {kind} hold {neg} -inf values (classes of probability 0) in shape {shape}, which this "
            "objective cannot use (its value or gradient would be inf or NaN); expected finite logits, or an "
            "objective that allows masked classes (kd, forward_kl, tv)"
        )
    return None


def value_problem(where: str, what: str, x: Tensor) -> str | None:
    """The one-line reason a feature tensor cannot be used (None when every value is finite); counts exactly."""
    nan, pos, neg = _count(x)
    if not (nan or pos or neg):
        return None
    return (
        f"{where}: {what} hold {nan + pos + neg} non-finite values ({nan} NaN, {pos} +inf, {neg} -inf) in shape "
        f"{tuple(x.shape)}; expected finite features — check the teacher's precision and its inputs"
    )


def label_problem(labels: Tensor, classes: int, ignore: int = IGNORE) -> str | None:
    """The one-line reason ``labels`` do not fit ``classes`` outputs (None when they do), naming the first bad one."""
    y = labels.reshape(-1)
    bad = y[((y >= classes) | (y < 0)) & (y != ignore)]
    if not bad.numel():
        return None
    return (
        f"label {int(bad[0])} is out of range for a model with {classes} outputs: labels must be in "
        f"[0, {classes - 1}] ({ignore} marks positions without a target)"
    )


def _rows_and_classes(signal: Tensor | SparseSignal) -> tuple[int, int]:
    if isinstance(signal, SparseSignal):
        k = signal.ids.shape[-1]
        return (signal.ids.numel() // k if k else 0), signal.vocab_size
    classes = signal.shape[-1] if signal.dim() else 0
    return (signal.numel() // classes if classes else 0), classes


def check_logit_inputs(
    name: str, student: Tensor, teacher: Tensor | SparseSignal | None, labels: Tensor | None, uses_labels: bool
) -> None:
    """Refuse, before any math, logits that cannot be compared: no rows, other shapes, other devices, labels."""
    rows, classes = _rows_and_classes(student)
    if rows == 0 or classes == 0:
        raise ShapeMismatchError(
            f"objective {name!r}: student logits of shape {tuple(student.shape)} have no rows to compare; expected "
            "at least one sample (for sequences, at least one target token: labels not all -100, attention_mask "
            "not all 0)"
        )
    if teacher is not None:
        t_rows, t_classes = _rows_and_classes(teacher)
        t_shape = (*teacher.ids.shape[:-1], teacher.vocab_size) if isinstance(teacher, SparseSignal) else teacher.shape
        if (t_rows, t_classes) != (rows, classes):
            raise ShapeMismatchError(
                f"objective {name!r}: teacher logits of shape {tuple(t_shape)} and student logits of shape "
                f"{tuple(student.shape)} cannot be compared: expected {rows} rows of {classes} classes on both sides"
            )
        if _device(teacher) != student.device:
            raise ShapeMismatchError(
                f"objective {name!r}: teacher logits on {_device(teacher)} and student logits on {student.device} "
                "cannot be compared: expected the same device (move the teacher's signal with .to(device))"
            )
    if uses_labels and labels is not None:
        if labels.numel() != rows:
            raise ShapeMismatchError(
                f"objective {name!r}: labels of shape {tuple(labels.shape)} do not fit student logits of shape "
                f"{tuple(student.shape)}: expected one label per row ({rows})"
            )
        if labels.device != student.device:
            raise ShapeMismatchError(
                f"objective {name!r}: labels on {labels.device} and student logits on {student.device}: expected "
                "the same device"
            )


def check_logit_values(
    name: str,
    student: Tensor,
    teacher: Tensor | SparseSignal | None,
    labels: Tensor | None,
    masked_ok: bool,
    ignore: int = IGNORE,
) -> None:
    """Refuse NaN/+inf teacher logits (-inf unless ``masked_ok``) and labels out of range, in one read-back."""
    device = student.device
    if device.type == "meta":
        return  # shapes only: a meta tensor has no values to check
    classes = student.shape[-1]
    none = torch.zeros(3, dtype=torch.bool, device=device)
    flags = [logit_flags(teacher).to(device) if teacher is not None else none]
    if labels is not None:
        flags.append(label_flags(labels, classes, ignore).to(device))
    found = torch.cat(flags).tolist()
    if teacher is not None and any(found[:3]):
        problem = logit_problem(f"objective {name!r}", "teacher logits", teacher, masked_ok)
        if problem:
            raise NonFiniteSignalError(problem)
    if labels is not None and found[3]:
        problem = label_problem(labels, classes, ignore)
        if problem:
            raise ShapeMismatchError(f"objective {name!r}: {problem}")
