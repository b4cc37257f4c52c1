"""Per-row token-level divergences for causal-LM distillation: the pure math under the chunked engine.

Every function takes student logits ``s`` (n, V) and teacher log-probabilities ``log_p`` (n, V), already at the
temperature T the caller chose, and returns one value per row, shape (n,), never a mean. The student is q =
softmax(s/T). Only forward_kl_rows and reverse_kl_rows carry the T² factor; the others return the divergence itself.
Inputs are computed in float32 (float64 stays float64, for gradcheck).

Masked vocabulary ids (log p = -inf) give finite values and gradients everywhere except where a divergence is
infinite by definition: KL(q ‖ p) with q > 0 where p = 0 (reverse_kl_rows, jsd_rows at beta=1, skew reverse at
alpha=0) is +inf, never NaN. Mask the student's logits at the same ids (s = -inf) to leave them out of both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


def _f32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _student_log_probs(s: Tensor, T: float) -> Tensor:
    x = _f32(s)
    return F.log_softmax(x if T == 1 else x / T, dim=-1)


def _kl_to_mix(log_a: Tensor, log_b: Tensor, w: float, detach_a_in_mix: bool = False) -> Tensor:
    """Per-row KL(a ‖ w·a + (1−w)·b) from log-probabilities, the sum over the ids where a > 0."""
    a = log_a.exp()
    keep = a > 0
    la = log_a.detach() if detach_a_in_mix else log_a
    if w == 0:
        log_m = log_b
    elif w == 1:
        log_m = la
    else:
        # Inputs sanitized where a = 0 (the term is 0 there): logaddexp of two -inf would back-propagate NaN.
        la, lb = torch.where(keep, la, 0.0), torch.where(keep, log_b, 0.0)
        log_m = torch.logaddexp(la + math.log(w), lb + math.log1p(-w))
    return (a * torch.where(keep, log_a - log_m, 0.0)).sum(-1)


def forward_kl_rows(s: Tensor, log_p: Tensor, T: float = 1.0) -> Tensor:
    """T²·KL(p ‖ softmax(s/T)) per row: mode-covering, the usual KD loss.

    KL(p ‖ q) = Σ_v p_v·(log p_v − log q_v), Hinton et al. (2015), scaled by T² to keep gradient sizes comparable.
    """
    return _kl_to_mix(_f32(log_p), _student_log_probs(s, T), 0.0) * (T * T)


def reverse_kl_rows(s: Tensor, log_p: Tensor, T: float = 1.0) -> Tensor:
    """T²·KL(softmax(s/T) ‖ p) per row: mode-seeking; +inf where the student has mass on a teacher zero.

    KL(q ‖ p) = Σ_v q_v·(log q_v − log p_v), scaled by T².
    """
    return _kl_to_mix(_student_log_probs(s, T), _f32(log_p), 0.0) * (T * T)


def jsd_rows(s: Tensor, log_p: Tensor, beta: float = 0.5, T: float = 1.0) -> Tensor:
    """Generalized JSD per row, TRL GKDTrainer.generalized_jsd_loss convention: beta weights the teacher p.

    JSD(β) = β·KL(p ‖ m) + (1−β)·KL(q ‖ m), m = β·p + (1−β)·q (GKD, Agarwal et al. 2024, Eq. 1, with P the teacher
    and Q the student as in TRL). The endpoints are TRL's, not the mixture's limit (which is 0): β=0 gives
    KL(p ‖ q), β=1 gives KL(q ‖ p). No T² factor (TRL applies none).
    """
    log_p, log_q = _f32(log_p), _student_log_probs(s, T)
    if beta == 0:
        return _kl_to_mix(log_p, log_q, 0.0)
    if beta == 1:
        return _kl_to_mix(log_q, log_p, 0.0)
    # KL(p ‖ m) with m = β·p + (1−β)·q, and KL(q ‖ m) with the same m written as (1−β)·q + β·p.
    return beta * _kl_to_mix(log_p, log_q, beta) + (1.0 - beta) * _kl_to_mix(log_q, log_p, 1.0 - beta)


def tv_rows(s: Tensor, log_p: Tensor, T: float = 1.0) -> Tensor:
    """Total variation ½·Σ_v |p_v − q_v| per row, in [0, 1]."""
    return 0.5 * (_f32(log_p).exp() - _student_log_probs(s, T).exp()).abs().sum(-1)


def skew_forward_kl_rows(s: Tensor, log_p: Tensor, alpha: float = 0.1, T: float = 1.0) -> Tensor:
    """DistiLLM skew KL per row: KL(p ‖ α·p + (1−α)·q), gradient through the mixture's q.

    SKL_α(p, q) = KL(p ‖ α·p + (1−α)·q) (Ko et al., ICML 2024, arXiv 2402.03898; jongwooko/distillm distillm/losses.py
    skewed_forward_kl, which detaches nothing). That code returns the cross-entropy −Σ p·log m, this KL plus the
    teacher entropy: same gradient, but here α=0 is exactly KL(p ‖ q) and q = p gives 0. No T² factor.
    """
    return _kl_to_mix(_f32(log_p), _student_log_probs(s, T), alpha)


def skew_reverse_kl_rows(s: Tensor, log_p: Tensor, alpha: float = 0.1, T: float = 1.0) -> Tensor:
    """DistiLLM skew reverse KL per row: KL(q ‖ (1−α)·p + α·q), gradient through the mixture's q.

    SRKL_α(p, q) = KL(q ‖ (1−α)·p + α·q) (Ko et al., ICML 2024, arXiv 2402.03898; jongwooko/distillm distillm/losses.py
    skewed_reverse_kl, which detaches nothing). α=0 is KL(q ‖ p). No T² factor.
    """
    return _kl_to_mix(_student_log_probs(s, T), _f32(log_p), alpha)


def taid_target_log_probs(s: Tensor, teacher_logits_or_logp: Tensor, t: float) -> Tensor:
    """TAID's intermediate target log softmax((1−t)·sg(s) + t·teacher), interpolated in logit space.

    p_t = softmax((1−t)·logit_q' + t·logit_p), q' the student with its gradient stopped (Shing et al., ICLR 2025,
    arXiv 2501.16937; SakanaAI/TAID src/distil_losses/taid.py TAID.compute_loss uses logits.detach()). Teacher
    log-probs serve as its logits: they differ by a per-row constant, which the softmax cancels. Pass s/T and the
    teacher at T for a temperature T.
    """
    x, z = _f32(s).detach(), _f32(teacher_logits_or_logp)
    # The endpoints avoid 0·(-inf) = NaN at masked ids.
    if t <= 0:
        mixed = x
    elif t >= 1:
        mixed = z
    else:
        mixed = (1.0 - t) * x + t * z
    return F.log_softmax(mixed, dim=-1)


def taid_rows(s: Tensor, log_p: Tensor, t: float, T: float = 1.0) -> Tensor:
    """TAID per row: KL(p_t ‖ q) to the interpolated target, the target detached from the student.

    J_TAID^(t) = KL(p_t ‖ q), p_t = softmax((1−t)·sg(s/T) + t·log p) (Shing et al., ICLR 2025). t=0 gives 0, t=1
    gives KL(p ‖ q). The official code (SakanaAI/TAID, forward_kl with teacher_probs=p_t) returns the cross-entropy
    −Σ p_t·log q: same gradient, larger by the entropy of p_t. No T² factor (neither paper nor code has a T).
    """
    log_q = _student_log_probs(s, T)
    x = _f32(s)
    return _kl_to_mix(taid_target_log_probs(x if T == 1 else x / T, log_p, t), log_q, 0.0)


def _sigmoid(x: float) -> float:
    # Either branch's exp stays ≤ 1: no OverflowError for a momentum of any size.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass
class TaidSchedule:
    """TAID's adaptive interpolation parameter t, updated once per training step from the objective's value.

    With δ_n = (J_{n−1} − J_n)/(J_{n−1} + 1e-15), m_n = β·m_{n−1} + (1−β)·δ_n, Δt = α·sigmoid(m_n)·(1 − t_n):
    t_{n+1} = min(t_end, max(t_start + (t_end − t_start)·progress, t_n + Δt)); the first call only records J.
    (Shing et al., ICLR 2025; SakanaAI/TAID src/distil_losses/taid.py TAID.update_t, whose defaults these are.)
    """

    t_start: float = 0.4
    t_end: float = 1.0
    alpha: float = 5e-4
    beta: float = 0.99
    t: float = field(init=False)
    prev_loss: float = field(init=False, default=math.inf)
    momentum: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if not (0.0 <= self.t_start < 1.0 and self.t_start <= self.t_end <= 1.0 and self.t_end > 0.0):
            raise ValueError(f"need 0 ≤ t_start < 1 and t_start ≤ t_end ≤ 1, got {self.t_start}, {self.t_end}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        self.t = float(self.t_start)

    def value(self) -> float:
        """The current interpolation parameter t."""
        return self.t

    def update(self, loss: float, progress: float) -> None:
        """One step: ``loss`` is this step's TAID objective (the paper's J, a KL), ``progress`` = step / total."""
        loss = float(loss)
        # A NaN/inf loss would poison the momentum for good (the official code then only follows the linear floor).
        if not math.isfinite(loss):
            return
        if math.isinf(self.prev_loss):
            self.prev_loss = loss
            return
        relative_change = (self.prev_loss - loss) / (self.prev_loss + 1e-15)
        self.momentum = self.beta * self.momentum + (1.0 - self.beta) * relative_change
        delta_t = self.alpha * _sigmoid(self.momentum) * (1.0 - self.t)
        t_linear = self.t_start + (self.t_end - self.t_start) * float(progress)
        self.t = min(self.t_end, max(t_linear, self.t + delta_t))
        self.prev_loss = loss

    def state_dict(self) -> dict[str, float]:
        """Everything needed to resume, as plain floats (prev_loss is inf before the first update)."""
        return {
            "t_start": self.t_start,
            "t_end": self.t_end,
            "alpha": self.alpha,
            "beta": self.beta,
            "t": self.t,
            "prev_loss": self.prev_loss,
            "momentum": self.momentum,
        }

    def load_state_dict(self, d: dict[str, float]) -> None:
        """Restore what state_dict returned."""
        for key in ("t_start", "t_end", "alpha", "beta", "t", "prev_loss", "momentum"):
            setattr(self, key, float(d[key]))


def distillm2_rows(
    s: Tensor,
    log_p: Tensor,
    from_student: Tensor,
    alpha: float = 0.1,
    T: float = 1.0,
    beta: float = 1.0,
) -> Tensor:
    """DistiLLM-2 per row: skew KL on teacher-generated rows, skew reverse KL (mixture's q detached) on student rows.

    L = (2−β)·KL(p ‖ α·p + (1−α)·q) on teacher responses + β·KL(q ‖ (1−α)·p + α·sg(q)) on student responses
    (Ko et al., ICML 2025, CALD; jongwooko/distillm-2 src/distillm_trainer.py get_batch_logps / kd_loss, where the
    SRKL mixture uses vocab_logps.detach() and β = 1 unless gradual_beta). Simplification: α is a fixed scalar; the
    sequence-level adaptive α (off in the released code, update_alpha=False) is left to the caller. No T² factor.
    """
    log_p, log_q = _f32(log_p), _student_log_probs(s, T)
    fs = from_student.reshape(-1).bool()
    out = log_q.new_zeros(log_q.shape[0])
    # Each row computed once, by its own branch: no wasted (n, V) work, and no inf in an unused branch.
    out[~fs] = (2.0 - beta) * _kl_to_mix(log_p[~fs], log_q[~fs], alpha)
    out[fs] = beta * _kl_to_mix(log_q[fs], log_p[fs], alpha, detach_a_in_mix=True)
    return out


def ce_rows(s: Tensor, labels: Tensor) -> Tensor:
    """Per-row cross-entropy −log softmax(s)[label], 0 where the label is −100."""
    return F.cross_entropy(_f32(s), labels.reshape(-1).long(), ignore_index=-100, reduction="none")


# Closed-form gradients: (rows, ∂Σrows/∂s) without an autograd graph over (n, V) tensors. The chunked engine uses
# them where they exist; autograd would keep every intermediate of the formula alive for the backward, which made
# JSD peak at ~25 (chunk × V) buffers. Each equals the autograd gradient of its row function above (tested).


def _softmax_backward(q: Tensor, g: Tensor, qg: Tensor | None = None) -> Tensor:
    """∂L/∂z = q ⊙ (g − Σ q·g) for q = softmax(z) and g = ∂L/∂q, in place into g (``qg``: Σ q·g when known)."""
    if qg is None:
        qg = (q * g).sum(-1)
    return g.sub_(qg.unsqueeze(-1)).mul_(q)


def _weighted_diff_rows(w: Tensor, log_a: Tensor, log_b: Tensor) -> Tensor:
    """Σ_v w·(log_a − log_b) per row over the ids where w > 0 (0·(−inf) never reached), one temporary."""
    d = log_a - log_b
    d.masked_fill_(w <= 0, 0.0)
    return d.mul_(w).sum(-1)


def forward_kl_rows_grad(s: Tensor, log_p: Tensor, T: float = 1.0) -> tuple[Tensor, Tensor]:
    """forward_kl_rows and its gradient T·(q − p) with respect to s."""
    log_p = _f32(log_p)
    log_q = _student_log_probs(s, T)
    p = log_p.exp()
    rows = _weighted_diff_rows(p, log_p, log_q) * (T * T)
    g = log_q.exp_().sub_(p)
    return rows, g.mul_(T) if T != 1 else g


def reverse_kl_rows_grad(s: Tensor, log_p: Tensor, T: float = 1.0) -> tuple[Tensor, Tensor]:
    """reverse_kl_rows and its gradient T·q ⊙ (r − Σ q·r), r = log q − log p."""
    r = _student_log_probs(s, T)
    q = r.exp()
    r.sub_(_f32(log_p)).masked_fill_(q <= 0, 0.0)
    rows = (q * r).sum(-1)
    g = _softmax_backward(q, r, rows)  # Σ q·r is both the row value and the softmax Jacobian's centring term
    return rows * (T * T), g.mul_(T) if T != 1 else g


def jsd_rows_grad(s: Tensor, log_p: Tensor, beta: float = 0.5, T: float = 1.0) -> tuple[Tensor, Tensor]:
    """jsd_rows and its gradient: ∂/∂q of β·KL(p ‖ m) + (1−β)·KL(q ‖ m) is (1−β)·(log q − log m), then softmax's."""
    if beta == 0:
        rows, g = forward_kl_rows_grad(s, log_p, T)
        return rows / (T * T), g.div_(T * T) if T != 1 else g
    if beta == 1:
        rows, g = reverse_kl_rows_grad(s, log_p, T)
        return rows / (T * T), g.div_(T * T) if T != 1 else g
    log_p = _f32(log_p)
    log_q = _student_log_probs(s, T)
    # In place where the buffer is ours: each (n, V) temporary is a chunk-sized allocation at the step's peak.
    log_m = log_p + math.log(beta)
    torch.logaddexp(log_m, log_q + math.log1p(-beta), out=log_m)
    p = log_p.exp()
    rows = beta * _weighted_diff_rows(p, log_p, log_m)
    del p
    q = log_q.exp()
    r = log_m.neg_().add_(log_q).masked_fill_(q <= 0, 0.0)  # log q − log m
    del log_q
    qr = (q * r).sum(-1)
    rows += (1.0 - beta) * qr
    g = _softmax_backward(q, r, qr).mul_((1.0 - beta) / T)
    return rows, g


def taid_rows_grad(s: Tensor, log_p: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """taid_rows (T = 1) and its gradient q − p_t (the target is detached from the student)."""
    log_q = _student_log_probs(s, 1.0)
    log_t = taid_target_log_probs(s, log_p, t)
    pt = log_t.exp()
    rows = _weighted_diff_rows(pt, log_t, log_q)
    del log_t
    return rows, log_q.exp_().sub_(pt)
