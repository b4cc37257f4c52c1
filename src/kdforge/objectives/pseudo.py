"""Semi-supervised terms: FixMatch/FreeMatch pseudo-labels and Mean Teacher's consistency cost; labels unused."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from kdforge.errors import ConfigError
from kdforge.objectives.base import register_objective
from kdforge.objectives.functional import log_softmax_rows, rows, softmax_rows


class FreeMatchState:
    """FreeMatch's self-adaptive thresholds (Wang et al. 2023, "FreeMatch: Self-adaptive Thresholding for SSL").

    Checked against the paper (eqs. for SAT) and its reference code (USB's FreeMatchThresholingHook):
    global τ_t = λ·τ_{t−1} + (1−λ)·mean_b max_c q_bc; local p̃_t(c) = λ·p̃_{t−1}(c) + (1−λ)·mean_b q_bc;
    τ_t(c) = MaxNorm(p̃_t)(c)·τ_t = p̃_t(c) / max_c' p̃_t(c') · τ_t; τ_0 = 1/C and p̃_0 = 1/C; the state is updated
    with the batch's (weak-view) probabilities before the mask max_c q_bc ≥ τ_t(argmax_c q_b) is taken.
    The reference gathers probabilities over all processes first; this state sees its own process's batch.
    """

    def __init__(self, ema: float = 0.999):
        if not 0 <= ema < 1:
            raise ConfigError(f"objective 'pseudo_label': parameter ema={ema} must be in [0, 1)")
        self.ema = float(ema)
        self.tau: Tensor | None = None  # global threshold τ (a 0-dim tensor); None until the class count is known
        self.p: Tensor | None = None  # class marginals p̃ (C,)

    @torch.no_grad()
    def update(self, probs: Tensor) -> None:
        """One EMA step from a batch of class probabilities (N, C)."""
        probs = probs.detach().float()
        c = probs.shape[-1]
        if self.tau is None or self.p is None or self.p.numel() != c:
            self.tau = torch.tensor(1.0 / c, device=probs.device)
            self.p = torch.full((c,), 1.0 / c, device=probs.device)
        tau, p = self.tau.to(probs.device), self.p.to(probs.device)
        lam = self.ema
        self.tau = lam * tau + (1 - lam) * probs.max(-1).values.mean()
        self.p = lam * p + (1 - lam) * probs.mean(0)

    def thresholds(self) -> Tensor:
        """Per-class thresholds τ(c) = p̃(c) / max p̃ · τ."""
        if self.tau is None or self.p is None:
            raise ValueError("FreeMatchState.thresholds() before the first update")
        return self.p / self.p.max() * self.tau

    def state_dict(self) -> dict[str, float]:
        """τ and p̃ as C + 1 plain floats (empty before the first update)."""
        if self.tau is None or self.p is None:
            return {}
        return {"tau": float(self.tau), **{f"p.{c}": float(v) for c, v in enumerate(self.p.tolist())}}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Restore what ``state_dict`` returned."""
        if not state:
            self.tau = self.p = None
            return
        c = sum(1 for k in state if k.startswith("p."))
        self.tau = torch.tensor(float(state["tau"]))
        self.p = torch.tensor([float(state[f"p.{i}"]) for i in range(c)])


def _freematch_state(params: Mapping[str, Any]) -> FreeMatchState | None:
    return FreeMatchState(params["ema"]) if params["dynamic"] == "freematch" else None


@register_objective("pseudo_label", teacher=True, labels=False, state=_freematch_state)
def pseudo_label(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    *,
    threshold: float = 0.95,
    T: float = 1.0,
    hard: bool = True,
    dynamic: Literal["none", "freematch"] = "none",
    ema: float = 0.999,
    state: Any = None,
) -> Tensor:
    """FixMatch pseudo-labels: CE with the teacher's argmax on rows it is confident about, divided by all rows.

    q = softmax(t/T); mask_i = max_c q_ic ≥ threshold (FreeMatch's per-class τ(argmax q_i) with dynamic=freematch);
    loss = Σ_i mask_i·CE(s_i, argmax q_i) / n over ALL n rows, so the term's scale follows the confident share.
    ``hard=False``: the target is q itself (the teacher sharpened by T), −Σ_c q_ic log softmax(s_i)_c.
    """
    if T <= 0:
        raise ConfigError(f"objective 'pseudo_label': parameter T={T} must be > 0")
    s = rows(student_logits)
    q = softmax_rows(rows(teacher_logits).detach() / T)
    confidence, target = q.max(-1)
    if dynamic == "freematch":
        if state is None:
            raise ConfigError("objective 'pseudo_label' with dynamic=freematch needs its state (a FreeMatchState)")
        state.update(q)  # FreeMatch updates the thresholds with this batch first, then masks with them
        mask = confidence >= state.thresholds().to(q.device)[target]
    else:
        if not 0 <= threshold <= 1:
            raise ConfigError(f"objective 'pseudo_label': parameter threshold={threshold} must be in [0, 1]")
        mask = confidence >= threshold
    log_p = log_softmax_rows(s)
    ce = -log_p.gather(1, target[:, None]).squeeze(1) if hard else -(q * log_p).sum(-1)
    # where, not a product: a masked-out row contributes an exact 0 and a zero gradient even if its CE is not finite.
    return torch.where(mask, ce, torch.zeros_like(ce)).sum() / max(s.shape[0], 1)


@register_objective("consistency", teacher=True, labels=False)
def consistency(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    *,
    T: float = 1.0,
) -> Tensor:
    """Mean Teacher's consistency cost: Σ_c (softmax(s/T)_c − softmax(t/T)_c)², averaged over rows."""
    if T <= 0:
        raise ConfigError(f"objective 'consistency': parameter T={T} must be > 0")
    p = softmax_rows(rows(student_logits) / T)
    q = softmax_rows(rows(teacher_logits).detach() / T)
    return (p - q).pow(2).sum(-1).mean()
