"""pseudo_label (FixMatch, FreeMatch thresholds) and consistency (Mean Teacher) against hand formulas in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdforge.errors import ConfigError
from kdforge.objectives import objective
from kdforge.objectives.pseudo import FreeMatchState, consistency, pseudo_label


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def logits(seed: int = 0, n: int = 16, c: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64)
    # Teacher rows of growing sharpness: some confident, some not.
    t = torch.randn(n, c, generator=g, dtype=torch.float64) * torch.linspace(0.5, 8, n, dtype=torch.float64)[:, None]
    return s.float(), t.float()


@pytest.mark.parametrize("T", [1.0, 0.5])
def test_pseudo_label_hard_matches_fixmatch_by_hand_with_its_gradient(T: float):
    s, t = logits()
    s.requires_grad_(True)
    loss = pseudo_label(s, t, None, threshold=0.9, T=T)
    loss.backward()
    S, Q = s.detach().double().numpy(), np_softmax(t.double().numpy() / T)
    mask, target = Q.max(1) >= 0.9, Q.argmax(1)
    ce = -np_log_softmax(S)[np.arange(len(S)), target]
    assert 0 < mask.sum() < len(S), "the example has confident and unconfident rows"
    assert loss.item() == pytest.approx((mask * ce).sum() / len(S), rel=1e-5)
    # ∂/∂s_i = mask_i (softmax(s_i) − onehot(argmax q_i)) / n, over all n rows.
    grad = (np_softmax(S) - np.eye(S.shape[1])[target]) * mask[:, None] / len(S)
    np.testing.assert_allclose(s.grad.numpy(), grad, atol=1e-6)


def test_pseudo_label_soft_targets_are_the_sharpened_teacher():
    s, t = logits(1)
    loss = pseudo_label(s, t, None, threshold=0.5, T=0.5, hard=False)
    Q = np_softmax(t.double().numpy() / 0.5)
    mask = Q.max(1) >= 0.5
    want = (mask * -(Q * np_log_softmax(s.double().numpy())).sum(1)).sum() / len(Q)
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_no_confident_row_gives_exactly_zero_and_zero_gradients():
    s, t = logits(2)
    s = (s * 50).requires_grad_(True)  # large student logits: CE of some rows is big, still masked out
    loss = pseudo_label(s, t * 0.01, None)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_labels_are_not_used():
    s, t = logits(3)
    none = pseudo_label(s, t, None, threshold=0.6)
    hidden = pseudo_label(s, t, torch.full((len(s),), -100), threshold=0.6)
    assert torch.equal(none, hidden)
    assert torch.equal(consistency(s, t, None), consistency(s, t, torch.full((len(s),), -100)))


def test_freematch_state_follows_the_papers_emas():
    g = torch.Generator().manual_seed(4)
    q1, q2 = (torch.softmax(torch.randn(8, 4, generator=g) * 3, -1) for _ in range(2))
    state = FreeMatchState(ema=0.9)
    assert state.state_dict() == {}
    state.update(q1)
    state.update(q2)
    tau, p = 1 / 4, np.full(4, 1 / 4)
    for q in (q1.double().numpy(), q2.double().numpy()):
        tau = 0.9 * tau + 0.1 * q.max(1).mean()
        p = 0.9 * p + 0.1 * q.mean(0)
    saved = state.state_dict()
    assert list(saved) == ["tau", "p.0", "p.1", "p.2", "p.3"] and all(type(v) is float for v in saved.values())
    assert saved["tau"] == pytest.approx(tau, rel=1e-6)
    np.testing.assert_allclose([saved[f"p.{c}"] for c in range(4)], p, rtol=1e-6)
    np.testing.assert_allclose(state.thresholds().numpy(), p / p.max() * tau, rtol=1e-6)
    restored = FreeMatchState(ema=0.9)
    restored.load_state_dict(saved)
    assert restored.state_dict() == saved
    restored.update(q1)
    state.update(q1)
    assert restored.state_dict() == state.state_dict(), "a resumed state continues exactly"


def test_freematch_per_class_thresholds_mask_the_right_rows():
    state = FreeMatchState(ema=0.999)
    # τ = 0.8; p̃ favours class 0, so τ(0) ≈ 0.8 while τ(1) = τ(2) ≈ 0.4.
    state.load_state_dict({"tau": 0.8, "p.0": 0.5, "p.1": 0.25, "p.2": 0.25})
    q = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.3, 0.25, 0.45], [0.33, 0.35, 0.32], [0.9, 0.05, 0.05]])
    t = q.log()  # softmax(log q) = q at T = 1
    s = torch.randn(5, 3, generator=torch.Generator().manual_seed(5))
    loss = pseudo_label(s, t, None, threshold=0.99, dynamic="freematch", state=state)
    Q = q.double().numpy()
    tau = 0.999 * 0.8 + 0.001 * Q.max(1).mean()
    p = 0.999 * np.array([0.5, 0.25, 0.25]) + 0.001 * Q.mean(0)
    per_class = p / p.max() * tau
    mask = Q.max(1) >= per_class[Q.argmax(1)]
    assert mask.tolist() == [False, True, True, False, True], "class thresholds, not the fixed 0.99, decide"
    ce = -np_log_softmax(s.double().numpy())[np.arange(5), Q.argmax(1)]
    assert loss.item() == pytest.approx((mask * ce).sum() / 5, rel=1e-5)
    assert state.state_dict()["tau"] == pytest.approx(tau, rel=1e-6), "the call updated the state first"


def test_freematch_starts_at_one_over_c_and_needs_its_state():
    state = FreeMatchState(ema=0.5)
    s, t = logits(6, n=4, c=5)
    pseudo_label(s, t, None, dynamic="freematch", state=state)
    Q = np_softmax(t.double().numpy())
    assert state.state_dict()["tau"] == pytest.approx(0.5 * 0.2 + 0.5 * Q.max(1).mean(), rel=1e-6)
    with pytest.raises(ConfigError, match="dynamic=freematch needs its state"):
        pseudo_label(s, t, None, dynamic="freematch")


def test_registered_objectives_take_their_parameters_and_state():
    fixed = objective("pseudo_label")
    assert list(fixed.params) == ["threshold", "T", "hard", "dynamic", "ema"] and fixed.new_state() is None
    assert not fixed.needs.labels and fixed.needs.teacher_logits
    dynamic = objective("pseudo_label", dynamic="freematch", ema=0.9)
    state = dynamic.new_state()
    assert isinstance(state, FreeMatchState) and state.ema == 0.9
    s, t = logits(7)
    via_registry = dynamic(s, t, None, state=state)
    direct = pseudo_label(s, t, None, dynamic="freematch", ema=0.9, state=FreeMatchState(0.9))
    assert torch.equal(via_registry, direct) and state.state_dict(), "the state reached the function and moved"
    with pytest.raises(ConfigError, match="must be one of none, freematch"):
        objective("pseudo_label", dynamic="flexmatch")
    assert list(objective("consistency", T=2.0).params) == ["T"]


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_consistency_is_the_squared_distance_of_probabilities(T: float):
    s, t = logits(8)
    s.requires_grad_(True)
    loss = consistency(s, t, None, T=T)
    loss.backward()
    P, Q = np_softmax(s.detach().double().numpy() / T), np_softmax(t.double().numpy() / T)
    assert loss.item() == pytest.approx(((P - Q) ** 2).sum(1).mean(), rel=1e-5)
    # ∂/∂s: 2/(nT)·J_softmax·(p − q), J = diag(p) − p pᵀ.
    d = P - Q
    grad = 2 / (len(P) * T) * (P * d - P * (P * d).sum(1, keepdims=True))
    np.testing.assert_allclose(s.grad.numpy(), grad, atol=1e-6)
    assert float(consistency(t, t, None)) == 0.0
