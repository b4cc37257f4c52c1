"""Divergences against a top-k SparseSignal, computed without ever expanding the teacher to the vocabulary.

Each kernel equals its dense objective applied to ``signal.to_dense_logits()`` (the top-k log-probs, the tail mass
spread uniformly over the r = V − k other ids), up to float rounding. All r tail ids share one teacher value, so every
teacher sum is O(k) per row; the only (N, V) tensors are the student's own. Kernels return per-row values: the caller
takes the mean and applies any T² factor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.objectives.base import register_sparse
from kdforge.objectives.functional import kl_rows
from kdforge.signals import SparseSignal


def sparse_teacher(signal: SparseSignal, T: float) -> tuple[Tensor, Tensor, int]:
    """Teacher log-probs at T: (N, k) at the top-k ids, (N,) of each of the r = V − k other ids, and r."""
    k = signal.ids.shape[-1]
    r = signal.vocab_size - k
    # softmax(T_s·log p̂ / T) = p̂^(T_s/T), renormalized.
    a = signal.temperature / T
    top = signal.logprobs.float() * a
    if r == 0:
        # k = V: no tail ids; the reconstruction ignores the tail too.
        return top - torch.logsumexp(top, dim=-1, keepdim=True), torch.full_like(top[..., 0], -math.inf), 0
    fill = (signal.tail.float() - math.log(r)) * a
    # Normalizer over k top values and one tail value counted r times.
    z = torch.logsumexp(torch.cat([top, (fill + math.log(r)).unsqueeze(-1)], dim=-1), dim=-1)
    return top - z.unsqueeze(-1), fill - z, r


def _scaled(student_logits: Tensor, T: float) -> Tensor:
    """Student logits / T in float32."""
    x = student_logits.float()
    # Dividing by 1 would only add one more (N, V) temporary.
    return x if T == 1 else x / T


_TINY = torch.finfo(torch.float32).tiny


def _m_log_m(m: Tensor) -> Tensor:
    """Row sums of m·log m for m > 0."""
    # Not special.entr: its backward keeps four (N, V) temporaries alive at once, this one two.
    return (m * m.log()).sum(-1)


def _plogp(p: Tensor, log_p: Tensor) -> Tensor:
    """p·log p elementwise, 0 where p = 0 (log p may then be -inf)."""
    return torch.where(p > 0, p * log_p, torch.zeros_like(p))


def sparse_forward_kl(student_logits: Tensor, signal: SparseSignal, T: float = 1.0, tail: str = "uniform") -> Tensor:
    """Per-row KL(p_t ‖ p_s) at temperature T, shape (N,); the caller takes the mean and applies T².

    ``tail="uniform"``: the teacher's mass off its top-k spread evenly over the other ids (the dense reconstruction).
    ``tail="bucket"``: that mass compared as one outcome with the student's own mass off the top-k ids, a (k + 1)-way
    KL that leaves the shape of the student's tail to the data rather than pulling it flat.
    """
    log_p, log_c, r = sparse_teacher(signal, T)
    log_q = torch.log_softmax(_scaled(student_logits, T), dim=-1)
    ids = signal.ids.long()
    log_q_top = log_q.gather(-1, ids)
    kl = kl_rows(log_p, log_q_top)
    if r == 0:
        return kl
    if tail == "bucket":
        log_tail = log_c + math.log(r)  # the teacher's whole mass off its top-k
        q_rest = (1.0 - log_q_top.exp().sum(-1)).clamp(min=_TINY)
        return kl + _plogp(log_tail.exp(), log_tail) - log_tail.exp() * q_rest.log()
    c = log_c.exp()
    # Σ_tail c·(log c − log q_j) = r·c·log c − c·Σ_tail log q_j, with Σ_tail = Σ_all − Σ_top-k.
    tail_log_q = log_q.sum(-1) - log_q_top.sum(-1)
    return kl + r * _plogp(c, log_c) - c * tail_log_q


def sparse_reverse_kl(student_logits: Tensor, signal: SparseSignal, T: float = 1.0) -> Tensor:
    """Per-row KL(p_s ‖ p_t) at temperature T, shape (N,); the caller takes the mean and applies T²."""
    log_p, log_c, r = sparse_teacher(signal, T)
    log_q = torch.log_softmax(_scaled(student_logits, T), dim=-1)
    # Gathered before the (N, V) terms: autograd then runs its dense gradient last, once those temporaries are gone.
    q_top = log_q.gather(-1, signal.ids.long()).exp()
    neg_entropy = (log_q.exp() * log_q).sum(-1)
    # Σ_j q_j·log p_j: exact at the top-k ids, one shared log p on the student's remaining mass.
    cross = (q_top * log_p).sum(-1)
    if r > 0:
        # The student's mass off the top-k; rounding can take 1 − Σ a hair below 0.
        cross = cross + log_c * (1.0 - q_top.sum(-1)).clamp(min=0.0)
    return neg_entropy - cross


def sparse_jsd(student_logits: Tensor, signal: SparseSignal, beta: float = 0.5, T: float = 1.0) -> Tensor:
    """Per-row β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m), m = β·p_t + (1−β)·p_s, shape (N,); the caller takes the mean."""
    # TRL's convention: the endpoints are forward / reverse KL, not the limit of the mixture (which is 0).
    if beta == 0:
        return sparse_forward_kl(student_logits, signal, T)
    if beta == 1:
        return sparse_reverse_kl(student_logits, signal, T)
    log_p, log_c, r = sparse_teacher(signal, T)
    log_q = torch.log_softmax(_scaled(student_logits, T), dim=-1)
    # Gathered before the (N, V) terms: autograd then runs its dense gradient last, once those temporaries are gone.
    q_top = log_q.gather(-1, signal.ids.long()).exp()
    q = log_q.exp()
    neg_entropy = (q * log_q).sum(-1)
    p_top = log_p.exp()
    teacher_neg_entropy = _plogp(p_top, log_p).sum(-1)
    # Both KLs share log m: the sum is β·Σ p log p + (1−β)·Σ q log q − Σ m log m.
    m_log_m = _m_log_m((beta * p_top + (1.0 - beta) * q_top).clamp(min=_TINY))
    if r > 0:
        teacher_neg_entropy = teacher_neg_entropy + r * _plogp(log_c.exp(), log_c)
        # A floor on β·c keeps m > 0 (log m finite) where the student's probability underflows to 0.
        bc = (beta * log_c.exp()).clamp(min=_TINY).unsqueeze(-1)
        # Σ m log m over the tail ids: as if every id were a tail id, minus that value at the top-k ids.
        m_log_m = m_log_m + _m_log_m((1.0 - beta) * q + bc) - _m_log_m((1.0 - beta) * q_top + bc)
    return beta * teacher_neg_entropy + (1.0 - beta) * neg_entropy - m_log_m


def sparse_tv(student_logits: Tensor, signal: SparseSignal, T: float = 1.0) -> Tensor:
    """Per-row total variation ½·Σ|p_t − p_s| at temperature T, shape (N,); the caller takes the mean."""
    log_p, log_c, r = sparse_teacher(signal, T)
    q = torch.softmax(_scaled(student_logits, T), dim=-1)
    q_top = q.gather(-1, signal.ids.long())
    dist = (log_p.exp() - q_top).abs().sum(-1)
    if r > 0:
        c = log_c.exp().unsqueeze(-1)
        # Σ over the tail ids of |c − q_j|: as if every id were a tail id, minus that value at the top-k ids.
        dist = dist + (q - c).abs().sum(-1) - (q_top - c).abs().sum(-1)
    return 0.5 * dist


# The registered logit objectives, computed from a top-k SparseSignal by the kernels above: same value as on the
# signal's dense reconstruction (tail spread uniformly), never a (tokens × vocabulary) teacher tensor.


def _flat(student_logits: Tensor, signal: SparseSignal) -> tuple[Tensor, SparseSignal]:
    v = student_logits.shape[-1]
    rows = student_logits.reshape(-1, v).float()
    flat = SparseSignal(
        signal.ids.reshape(-1, signal.ids.shape[-1]),
        signal.logprobs.reshape(-1, signal.ids.shape[-1]),
        signal.tail.reshape(-1),
        signal.vocab_size,
        signal.temperature,
    )
    return rows, flat


@register_sparse("kd")
def sparse_kd(
    student_logits: Tensor, signal: SparseSignal, labels: Tensor | None, *, T: float = 4.0, alpha: float = 1.0
) -> Tensor:
    """(1-α)·CE(y, s) + α·T²·KL(p_t ‖ p_s) against a top-k signal."""
    s, sig = _flat(student_logits, signal)
    loss = alpha * T * T * sparse_forward_kl(s, sig, T).mean()
    if alpha < 1.0 and labels is not None:
        loss = loss + (1.0 - alpha) * F.cross_entropy(s, labels.reshape(-1).long(), ignore_index=-100)
    return loss


@register_sparse("forward_kl")
def sparse_forward_kl_term(
    student_logits: Tensor, signal: SparseSignal, labels: Tensor | None, *, T: float = 1.0, tail: str = "uniform"
) -> Tensor:
    """T²·KL(p_t ‖ p_s) against a top-k signal, its tail spread uniformly or compared as one bucket."""
    s, sig = _flat(student_logits, signal)
    return sparse_forward_kl(s, sig, T, tail).mean() * T * T


@register_sparse("reverse_kl")
def sparse_reverse_kl_term(
    student_logits: Tensor, signal: SparseSignal, labels: Tensor | None, *, T: float = 1.0
) -> Tensor:
    """T²·KL(p_s ‖ p_t) against a top-k signal."""
    s, sig = _flat(student_logits, signal)
    return sparse_reverse_kl(s, sig, T).mean() * T * T


@register_sparse("jsd")
def sparse_jsd_term(
    student_logits: Tensor, signal: SparseSignal, labels: Tensor | None, *, beta: float = 0.5, T: float = 1.0
) -> Tensor:
    """Generalized JSD(β) against a top-k signal (TRL's endpoints)."""
    s, sig = _flat(student_logits, signal)
    return sparse_jsd(s, sig, beta, T).mean()


@register_sparse("tv")
def sparse_tv_term(student_logits: Tensor, signal: SparseSignal, labels: Tensor | None, *, T: float = 1.0) -> Tensor:
    """Total variation against a top-k signal."""
    s, sig = _flat(student_logits, signal)
    return sparse_tv(s, sig, T).mean()
