"""Token-level objectives of causal-LM distillation, in per-token (row) form for the chunked engine.

Every objective here takes the teacher at the temperature it names, from a dense, top-k (sparse) or hidden-state
signal alike: top-k rows go through the sparse kernels where one exists (O(k) teacher work per token), and are
otherwise reconstructed per chunk (tail spread uniformly), which equals the dense objective at k = vocabulary size.
Row values are summed over tokens and divided by the number of target tokens of the global batch by the engine.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from kdforge.errors import ConfigError
from kdforge.objectives import token_math as tm
from kdforge.objectives.base import register_objective, register_row_grad, register_rows
from kdforge.objectives.chunked import ChunkTarget
from kdforge.objectives.functional import rows as flat_rows
from kdforge.objectives.sparse import sparse_forward_kl, sparse_jsd, sparse_reverse_kl, sparse_tv
from kdforge.signals import DenseSignal

TailMode = Literal["uniform", "bucket"]


def _fkl(s: Tensor, target: ChunkTarget, T: float, tail: str = "uniform") -> Tensor:
    """T²·KL(p_t ‖ p_s) per row (``tail``: how a top-k teacher's remaining mass is compared, see sparse_forward_kl)."""
    sparse = target.sparse
    if sparse is not None:
        return sparse_forward_kl(s, sparse, T, tail) * (T * T)
    return tm.forward_kl_rows(s, target.log_probs(T), T)


def _mean_rows(row_fn: Any, student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor | None, **p: Any):
    """The batch mean of a row form on plain (…, V) logits: the objective's value for a classifier."""
    s = flat_rows(student_logits)
    signal = None if teacher_logits is None else DenseSignal(flat_rows(teacher_logits))
    target = ChunkTarget(signal, 0, s.shape[0], s.shape[-1])
    y = None if labels is None else labels.reshape(-1)
    return row_fn(s, target, y, **p).mean()


@register_rows("kd")
def kd_rows(s: Tensor, target: ChunkTarget, labels: Tensor | None, *, T: float = 4.0, alpha: float = 1.0) -> Tensor:
    """(1−α)·CE + α·T²·KL(p_t ‖ p_s) per token."""
    out = _fkl(s, target, T) * alpha
    if alpha < 1.0 and labels is not None:
        out = out + (1.0 - alpha) * tm.ce_rows(s, labels)
    return out


@register_rows("forward_kl")
def forward_kl_rows(
    s: Tensor, target: ChunkTarget, labels: Tensor | None, *, T: float = 1.0, tail: TailMode = "uniform"
) -> Tensor:
    """T²·KL(p_t ‖ p_s) per token: mean-seeking, the plain word-level KD of SeqKD and MiniLLM's baseline."""
    return _fkl(s, target, T, tail)


@register_row_grad("forward_kl")
def forward_kl_grad(
    s: Tensor, target: ChunkTarget, labels: Tensor | None, *, T: float = 1.0, tail: TailMode = "uniform"
) -> tuple[Tensor, Tensor] | None:
    """Closed-form forward KL rows and gradient for a dense or hidden-state teacher (top-k rows: autograd)."""
    return None if target.sparse is not None else tm.forward_kl_rows_grad(s, target.log_probs(T), T)


@register_objective("forward_kl")
def forward_kl(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None, *, T: float = 1.0, tail: TailMode = "uniform"
) -> Tensor:
    """T²·KL(p_t ‖ p_s), mean over rows; ``tail`` (uniform | bucket) only matters for a top-k teacher."""
    return _mean_rows(forward_kl_rows, student_logits, teacher_logits, labels, T=T, tail=tail)


@register_rows("reverse_kl")
def reverse_kl_rows(s: Tensor, target: ChunkTarget, labels: Tensor | None, *, T: float = 1.0) -> Tensor:
    """T²·KL(p_s ‖ p_t) per token: mode-seeking (MiniLLM, GKD's β=1)."""
    sparse = target.sparse
    if sparse is not None:
        return sparse_reverse_kl(s, sparse, T) * (T * T)
    return tm.reverse_kl_rows(s, target.log_probs(T), T)


@register_row_grad("reverse_kl")
def reverse_kl_grad(
    s: Tensor, target: ChunkTarget, labels: Tensor | None, *, T: float = 1.0
) -> tuple[Tensor, Tensor] | None:
    """Closed-form reverse KL rows and gradient for a dense or hidden-state teacher."""
    return None if target.sparse is not None else tm.reverse_kl_rows_grad(s, target.log_probs(T), T)


@register_rows("jsd")
def jsd_rows(s: Tensor, target: ChunkTarget, labels: Tensor | None, *, beta: float = 0.5, T: float = 1.0) -> Tensor:
    """Generalized JSD(β) per token, TRL's GKD convention (β=0 forward KL, β=1 reverse KL)."""
    sparse = target.sparse
    if sparse is not None:
        return sparse_jsd(s, sparse, beta, T)
    return tm.jsd_rows(s, target.log_probs(T), beta, T)


@register_row_grad("jsd")
def jsd_grad(
    s: Tensor, target: ChunkTarget, labels: Tensor | None, *, beta: float = 0.5, T: float = 1.0
) -> tuple[Tensor, Tensor] | None:
    """Closed-form generalized JSD rows and gradient for a dense or hidden-state teacher."""
    return None if target.sparse is not None else tm.jsd_rows_grad(s, target.log_probs(T), beta, T)


@register_rows("tv")
def tv_rows(s: Tensor, target: ChunkTarget, labels: Tensor | None, *, T: float = 1.0) -> Tensor:
    """Total variation ½·Σ|p_t − p_s| per token."""
    sparse = target.sparse
    if sparse is not None:
        return sparse_tv(s, sparse, T)
    return tm.tv_rows(s, target.log_probs(T), T)


@register_rows("skew_kl")
def skew_kl_rows(
    s: Tensor, target: ChunkTarget, labels: Tensor | None, *, alpha: float = 0.1, T: float = 1.0
) -> Tensor:
    """DistiLLM's skew KL per token: KL(p_t ‖ α·p_t + (1−α)·p_s)."""
    return tm.skew_forward_kl_rows(s, target.log_probs(T), alpha, T)


@register_objective("skew_kl")
def skew_kl(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None, *, alpha: float = 0.1, T: float = 1.0
) -> Tensor:
    """DistiLLM's skew KL KL(p_t ‖ α·p_t + (1−α)·p_s), mean over rows."""
    return _mean_rows(skew_kl_rows, student_logits, teacher_logits, labels, alpha=alpha, T=T)


@register_rows("skew_reverse_kl")
def skew_reverse_kl_rows(
    s: Tensor, target: ChunkTarget, labels: Tensor | None, *, alpha: float = 0.1, T: float = 1.0
) -> Tensor:
    """DistiLLM's skew reverse KL per token: KL(p_s ‖ (1−α)·p_t + α·p_s)."""
    return tm.skew_reverse_kl_rows(s, target.log_probs(T), alpha, T)


# α = 0 is plain reverse KL, infinite at a class of teacher probability 0.
@register_objective("skew_reverse_kl", masked_teacher=lambda p: p["alpha"] > 0.0)
def skew_reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None, *, alpha: float = 0.1, T: float = 1.0
) -> Tensor:
    """DistiLLM's skew reverse KL KL(p_s ‖ (1−α)·p_t + α·p_s), mean over rows."""
    return _mean_rows(skew_reverse_kl_rows, student_logits, teacher_logits, labels, alpha=alpha, T=T)


def _taid_state(params: Any) -> tm.TaidSchedule:
    return tm.TaidSchedule(
        t_start=params["t_start"], t_end=params["t_end"], alpha=params["momentum_step"], beta=params["beta"]
    )


def _taid_t(state: Any, t_start: float, t_end: float, progress: float | None) -> float:
    """TAID's current t: the term's adaptive schedule, or outside a Distiller (no state) its linear floor."""
    return state.value() if state is not None else t_start + (t_end - t_start) * (progress or 0.0)


@register_rows("taid", state=_taid_state)
def taid_rows(
    s: Tensor,
    target: ChunkTarget,
    labels: Tensor | None,
    *,
    t_start: float = 0.4,
    t_end: float = 1.0,
    momentum_step: float = 5e-4,
    beta: float = 0.99,
    state: Any = None,
    progress: float | None = None,
) -> Tensor:
    """TAID per token: KL(p_t ‖ p_s), p_t = softmax((1−t)·sg(s) + t·teacher), t moved by its adaptive schedule."""
    t = _taid_t(state, t_start, t_end, progress)
    return tm.taid_rows(s, target.log_probs(1.0), t)


@register_row_grad("taid")
def taid_grad(
    s: Tensor,
    target: ChunkTarget,
    labels: Tensor | None,
    *,
    t_start: float = 0.4,
    t_end: float = 1.0,
    momentum_step: float = 5e-4,
    beta: float = 0.99,
    state: Any = None,
    progress: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Closed-form TAID rows and gradient (any teacher signal: the target is a dense tensor either way)."""
    t = _taid_t(state, t_start, t_end, progress)
    return tm.taid_rows_grad(s, target.log_probs(1.0), t)


@register_objective("taid")
def taid(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    *,
    t_start: float = 0.4,
    t_end: float = 1.0,
    momentum_step: float = 5e-4,
    beta: float = 0.99,
    progress: float | None = None,
) -> Tensor:
    """TAID (Shing et al. 2025): KL to a target interpolated from the student's logits to the teacher's, mean."""
    p = {"t_start": t_start, "t_end": t_end, "momentum_step": momentum_step, "beta": beta, "progress": progress}
    return _mean_rows(taid_rows, student_logits, teacher_logits, labels, **p)


@register_rows("distillm2")
def distillm2_rows(
    s: Tensor, target: ChunkTarget, labels: Tensor | None, *, alpha: float = 0.1, beta: float = 1.0, T: float = 1.0
) -> Tensor:
    """DistiLLM-2 per token: (2−β)·skew KL on teacher-written responses, β·skew reverse KL on the student's own."""
    origin = target.field("from_student")
    if origin is None:
        raise ConfigError(
            "objective 'distillm2' needs a 'from_student' field per response (teacher- vs student-generated); "
            "use data.responses with both sources"
        )
    return tm.distillm2_rows(s, target.log_probs(T), origin.bool(), alpha, T, beta)


@register_rows("ce")
def ce_rows(
    s: Tensor, target: ChunkTarget, labels: Tensor | None, *, label_smoothing: float = 0.0, ignore_index: int = -100
) -> Tensor:
    """Next-token cross-entropy per token (0 where the label is ignore_index)."""
    if labels is None:
        raise ValueError("objective 'ce' needs labels")
    if label_smoothing:
        import torch.nn.functional as F

        return F.cross_entropy(
            s, labels.long(), label_smoothing=label_smoothing, ignore_index=ignore_index, reduction="none"
        )
    return tm.ce_rows(s, labels.masked_fill(labels == ignore_index, -100))


@register_objective("distillm2")
def distillm2(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    *,
    alpha: float = 0.1,
    beta: float = 1.0,
    T: float = 1.0,
) -> Tensor:
    """DistiLLM-2 (Ko et al. 2025): contrastive skew KLs over teacher- and student-written responses (causal LMs)."""
    return _mean_rows(distillm2_rows, student_logits, teacher_logits, labels, alpha=alpha, beta=beta, T=T)
