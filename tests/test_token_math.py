"""Token-level divergences: hand-computed values, a float64 numpy re-implementation, limits, masks and gradients."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from kdforge.objectives.token_math import (
    TaidSchedule,
    ce_rows,
    distillm2_rows,
    forward_kl_rows,
    jsd_rows,
    reverse_kl_rows,
    skew_forward_kl_rows,
    skew_reverse_kl_rows,
    taid_rows,
    taid_target_log_probs,
    tv_rows,
)

TOL = {"rtol": 1e-5, "atol": 1e-5}

# The hand-checkable row: teacher p and student q over three ids; s = T·log q gives softmax(s/T) = q.
P = [0.7, 0.2, 0.1]
Q = [0.2, 0.3, 0.5]


def _row(T: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.tensor([[T * math.log(x) for x in Q]])
    log_p = torch.tensor([[math.log(x) for x in P]])
    return s, log_p


def _kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)


def _mix(w: float, a: list[float], b: list[float]) -> list[float]:
    return [w * x + (1 - w) * y for x, y in zip(a, b, strict=True)]


def _close(value: torch.Tensor, expected: float) -> None:
    assert_close(value, torch.tensor([expected]), **TOL)


# --- golden values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_forward_and_reverse_kl_golden(T: float) -> None:
    s, log_p = _row(T)
    fwd = 0.7 * math.log(0.7 / 0.2) + 0.2 * math.log(0.2 / 0.3) + 0.1 * math.log(0.1 / 0.5)
    rev = 0.2 * math.log(0.2 / 0.7) + 0.3 * math.log(0.3 / 0.2) + 0.5 * math.log(0.5 / 0.1)
    _close(forward_kl_rows(s, log_p, T=T), T * T * fwd)
    _close(reverse_kl_rows(s, log_p, T=T), T * T * rev)


def test_jsd_golden() -> None:
    s, log_p = _row()
    m = [0.45, 0.25, 0.3]  # ½·(p + q)
    half = 0.5 * (0.7 * math.log(0.7 / 0.45) + 0.2 * math.log(0.2 / 0.25) + 0.1 * math.log(0.1 / 0.3))
    half += 0.5 * (0.2 * math.log(0.2 / 0.45) + 0.3 * math.log(0.3 / 0.25) + 0.5 * math.log(0.5 / 0.3))
    _close(jsd_rows(s, log_p), half)
    # β weights the teacher: m = 0.9·p + 0.1·q.
    m = [0.9 * 0.7 + 0.1 * 0.2, 0.9 * 0.2 + 0.1 * 0.3, 0.9 * 0.1 + 0.1 * 0.5]
    _close(jsd_rows(s, log_p, beta=0.9), 0.9 * _kl(P, m) + 0.1 * _kl(Q, m))


def test_tv_golden() -> None:
    s, log_p = _row(3.0)
    _close(tv_rows(s, log_p, T=3.0), 0.5 * (0.5 + 0.1 + 0.4))


def test_skew_golden() -> None:
    s, log_p = _row()
    # SKL: m = 0.1·p + 0.9·q = [0.25, 0.29, 0.46].
    skl = 0.7 * math.log(0.7 / 0.25) + 0.2 * math.log(0.2 / 0.29) + 0.1 * math.log(0.1 / 0.46)
    # SRKL: m = 0.9·p + 0.1·q = [0.65, 0.21, 0.14].
    srkl = 0.2 * math.log(0.2 / 0.65) + 0.3 * math.log(0.3 / 0.21) + 0.5 * math.log(0.5 / 0.14)
    _close(skew_forward_kl_rows(s, log_p, alpha=0.1), skl)
    _close(skew_reverse_kl_rows(s, log_p, alpha=0.1), srkl)


def test_taid_golden() -> None:
    s, log_p = _row()
    # t = ½: the target is the normalized geometric mean √(p·q).
    g = [math.sqrt(0.7 * 0.2), math.sqrt(0.2 * 0.3), math.sqrt(0.1 * 0.5)]
    pt = [x / sum(g) for x in g]
    assert_close(taid_target_log_probs(s, log_p, 0.5), torch.tensor([[math.log(x) for x in pt]]), **TOL)
    _close(taid_rows(s, log_p, 0.5), _kl(pt, Q))
    # Raw teacher logits (log p + 5) give the same target: the row constant cancels in the softmax.
    assert_close(taid_target_log_probs(s, log_p + 5.0, 0.5), taid_target_log_probs(s, log_p, 0.5), **TOL)


def test_distillm2_golden() -> None:
    s, log_p = _row()
    s2, log_p2 = s.repeat(2, 1), log_p.repeat(2, 1)
    skl = _kl(P, _mix(0.1, P, Q))
    srkl = _kl(Q, _mix(0.9, P, Q))
    from_student = torch.tensor([False, True])
    assert_close(distillm2_rows(s2, log_p2, from_student), torch.tensor([skl, srkl]), **TOL)
    assert_close(distillm2_rows(s2, log_p2, from_student, beta=1.5), torch.tensor([0.5 * skl, 1.5 * srkl]), **TOL)


def test_ce_golden() -> None:
    s, _ = _row()
    s2 = s.repeat(3, 1)
    assert_close(ce_rows(s2, torch.tensor([0, -100, 2])), torch.tensor([-math.log(0.2), 0.0, -math.log(0.5)]), **TOL)


# --- an independent float64 numpy re-implementation -------------------------------------------------------------


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(p / q), 0.0).sum(-1)


def _inputs(T: float, seed: int, masked: bool = False) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Random (7, 11) student logits and teacher log-probs at T; the float64 p and q that they stand for."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(7, 11, generator=g) * 2.0
    z = torch.randn(7, 11, generator=g) * 2.0
    log_p = torch.log_softmax(z / T, dim=-1)
    if masked:
        log_p[:, [3, 8]] = -math.inf
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
    p = np.exp(log_p.double().numpy())
    q = np.exp(_np_log_softmax(s.double().numpy() / T))
    return s, log_p, p, q


def _np_reference(name: str, p: np.ndarray, q: np.ndarray, T: float, a: float, t: float) -> np.ndarray:
    if name == "forward_kl":
        return T * T * _np_kl(p, q)
    if name == "reverse_kl":
        return T * T * _np_kl(q, p)
    if name == "jsd":
        m = a * p + (1 - a) * q
        return a * _np_kl(p, m) + (1 - a) * _np_kl(q, m)
    if name == "tv":
        return 0.5 * np.abs(p - q).sum(-1)
    if name == "skew_forward":
        return _np_kl(p, a * p + (1 - a) * q)
    if name == "skew_reverse":
        return _np_kl(q, (1 - a) * p + a * q)
    if name == "taid":
        with np.errstate(divide="ignore"):
            logits = (1 - t) * np.log(q) + t * np.log(p)
        pt = np.exp(_np_log_softmax(logits))
        return _np_kl(pt, q)
    raise AssertionError(name)


def _call(name: str, s: torch.Tensor, log_p: torch.Tensor, T: float, a: float, t: float) -> torch.Tensor:
    fns = {
        "forward_kl": lambda: forward_kl_rows(s, log_p, T=T),
        "reverse_kl": lambda: reverse_kl_rows(s, log_p, T=T),
        "jsd": lambda: jsd_rows(s, log_p, beta=a, T=T),
        "tv": lambda: tv_rows(s, log_p, T=T),
        "skew_forward": lambda: skew_forward_kl_rows(s, log_p, alpha=a, T=T),
        "skew_reverse": lambda: skew_reverse_kl_rows(s, log_p, alpha=a, T=T),
        "taid": lambda: taid_rows(s, log_p, t, T=T),
    }
    return fns[name]()


NAMES = ["forward_kl", "reverse_kl", "jsd", "tv", "skew_forward", "skew_reverse", "taid"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("T", "a", "t"), [(1.0, 0.1, 0.4), (0.5, 0.3, 0.7), (2.0, 0.9, 0.1), (4.0, 0.5, 0.95)])
def test_matches_numpy_reference(name: str, T: float, a: float, t: float) -> None:
    s, log_p, p, q = _inputs(T, seed=int(10 * T + 100 * a))
    got = _call(name, s, log_p, T, a, t)
    assert got.shape == (7,) and got.dtype == torch.float32
    assert_close(got.double(), torch.from_numpy(_np_reference(name, p, q, T, a, t)), **TOL)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "reverse_kl"])
def test_matches_numpy_reference_with_masked_teacher_ids(name: str) -> None:
    s, log_p, p, q = _inputs(1.5, seed=7, masked=True)
    got = _call(name, s, log_p, 1.5, 0.3, 0.6)
    assert torch.isfinite(got).all()
    assert_close(got.double(), torch.from_numpy(_np_reference(name, p, q, 1.5, 0.3, 0.6)), **TOL)


def test_distillm2_matches_numpy_reference() -> None:
    s, log_p, p, q = _inputs(2.0, seed=3)
    fs = torch.tensor([True, False, False, True, True, False, True])
    want = np.where(fs.numpy(), 1.2 * _np_kl(q, 0.8 * p + 0.2 * q), 0.8 * _np_kl(p, 0.2 * p + 0.8 * q))
    got = distillm2_rows(s, log_p, fs, alpha=0.2, T=2.0, beta=1.2)
    assert_close(got.double(), torch.from_numpy(want), **TOL)


def test_ce_matches_numpy_reference() -> None:
    s, _, _, _ = _inputs(1.0, seed=5)
    labels = torch.tensor([0, 10, -100, 4, 4, -100, 7])
    logq = _np_log_softmax(s.double().numpy())
    want = [0.0 if y < 0 else -logq[i, y] for i, y in enumerate(labels.tolist())]
    assert_close(ce_rows(s, labels).double(), torch.tensor(want, dtype=torch.float64), **TOL)


# --- limits -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_limits(T: float) -> None:
    s, log_p, _, _ = _inputs(T, seed=11)
    fwd, rev = forward_kl_rows(s, log_p, T=T) / (T * T), reverse_kl_rows(s, log_p, T=T) / (T * T)
    zero = torch.zeros(7)
    assert_close(skew_forward_kl_rows(s, log_p, alpha=0.0, T=T), fwd, **TOL)
    assert_close(skew_reverse_kl_rows(s, log_p, alpha=0.0, T=T), rev, **TOL)
    assert_close(skew_forward_kl_rows(s, log_p, alpha=1.0, T=T), zero, **TOL)
    assert_close(skew_reverse_kl_rows(s, log_p, alpha=1.0, T=T), zero, **TOL)
    assert_close(jsd_rows(s, log_p, beta=0.0, T=T), fwd, **TOL)
    assert_close(jsd_rows(s, log_p, beta=1.0, T=T), rev, **TOL)
    assert_close(taid_rows(s, log_p, 1.0, T=T), fwd, **TOL)
    assert_close(taid_rows(s, log_p, 0.0, T=T), zero, **TOL)
    none = torch.zeros(7, dtype=torch.bool)
    assert_close(distillm2_rows(s, log_p, none, alpha=0.1, T=T), skew_forward_kl_rows(s, log_p, 0.1, T=T), **TOL)
    everyone = torch.ones(7, dtype=torch.bool)
    assert_close(distillm2_rows(s, log_p, everyone, alpha=0.1, T=T), skew_reverse_kl_rows(s, log_p, 0.1, T=T), **TOL)
    # Student = teacher: every divergence is 0.
    same = log_p * T
    for fn in (forward_kl_rows, reverse_kl_rows, jsd_rows, tv_rows, skew_forward_kl_rows, skew_reverse_kl_rows):
        assert_close(fn(same, log_p, T=T), zero, **TOL)


# --- masked vocabulary ids --------------------------------------------------------------------------------------


def _masked_pair() -> tuple[torch.Tensor, torch.Tensor]:
    s, log_p, _, _ = _inputs(1.0, seed=13, masked=True)
    return s, log_p


def _all_rows(skip_reverse: bool) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    fs = torch.arange(7) % 2 == 0
    out = {
        "forward_kl": lambda s, lp: forward_kl_rows(s, lp, T=2.0),
        "jsd": lambda s, lp: jsd_rows(s, lp, beta=0.5),
        "jsd_fwd": lambda s, lp: jsd_rows(s, lp, beta=0.0),
        "tv": tv_rows,
        "skew_forward": skew_forward_kl_rows,
        "skew_reverse": skew_reverse_kl_rows,
        "taid": lambda s, lp: taid_rows(s, lp, 0.5),
        "taid_end": lambda s, lp: taid_rows(s, lp, 1.0),
        "distillm2": lambda s, lp: distillm2_rows(s, lp, fs),
    }
    if not skip_reverse:
        out["reverse_kl"] = lambda s, lp: reverse_kl_rows(s, lp, T=2.0)
        out["jsd_rev"] = lambda s, lp: jsd_rows(s, lp, beta=1.0)
    return out


def _value_and_grad(fn, s: torch.Tensor, log_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = s.clone().requires_grad_(True)
    value = fn(x, log_p)
    value.sum().backward()
    return value.detach(), x.grad


def test_masked_teacher_ids_finite_values_and_gradients() -> None:
    s, log_p = _masked_pair()
    for name, fn in _all_rows(skip_reverse=True).items():
        value, grad = _value_and_grad(fn, s, log_p)
        assert torch.isfinite(value).all() and torch.isfinite(grad).all(), name
    # KL(q ‖ p) with q > 0 where p = 0 is +inf by definition: never NaN.
    assert torch.isposinf(reverse_kl_rows(s, log_p)).all()


def test_ids_masked_on_both_sides_drop_out() -> None:
    """Masking the same ids in student and teacher equals computing on the vocabulary without them."""
    s, log_p = _masked_pair()
    s[:, [3, 8]] = -math.inf
    keep = [v for v in range(11) if v not in (3, 8)]
    for name, fn in _all_rows(skip_reverse=False).items():
        value, grad = _value_and_grad(fn, s, log_p)
        assert torch.isfinite(value).all() and torch.isfinite(grad).all(), name
        assert_close(value, fn(s[:, keep], log_p[:, keep]), **TOL)
        assert (grad[:, [3, 8]] == 0).all(), name


# --- gradients --------------------------------------------------------------------------------------------------


def _tiny(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    log_p = torch.log_softmax(torch.randn(3, 5, generator=g, dtype=torch.float64), dim=-1)
    return s, log_p


@pytest.mark.parametrize(
    "fn",
    [
        lambda s, lp: forward_kl_rows(s, lp, T=2.0),
        lambda s, lp: reverse_kl_rows(s, lp, T=0.7),
        lambda s, lp: jsd_rows(s, lp, beta=0.3, T=1.5),
        lambda s, lp: skew_forward_kl_rows(s, lp, alpha=0.1),
        lambda s, lp: skew_forward_kl_rows(s, lp, alpha=0.4, T=2.0),
        lambda s, lp: skew_reverse_kl_rows(s, lp, alpha=0.1),
        lambda s, lp: skew_reverse_kl_rows(s, lp, alpha=0.4, T=2.0),
        lambda s, lp: taid_rows(s, lp, 1.0, T=1.5),
        lambda s, lp: distillm2_rows(s, lp, torch.zeros(3, dtype=torch.bool), alpha=0.2),
    ],
)
def test_gradcheck(fn) -> None:
    s, log_p = _tiny()
    assert torch.autograd.gradcheck(lambda x: fn(x, log_p), (s,))


def _softmax_grad(q: np.ndarray, g: np.ndarray, T: float) -> np.ndarray:
    """∂/∂s of Σ_v q_v·g_v-style losses through q = softmax(s/T), given ∂L/∂log q = q ⊙ g."""
    return q * (g - (q * g).sum(-1, keepdims=True)) / T


def test_taid_gradient_treats_the_target_as_a_constant() -> None:
    """∂/∂s KL(p_t ‖ softmax(s/T)) with p_t held fixed is (q − p_t)/T: the student inside p_t is detached."""
    s, log_p = _tiny(1)
    T, t = 1.5, 0.6
    taid_rows(s, log_p, t, T=T).sum().backward()
    x, lp = s.detach().numpy(), log_p.numpy()
    q = np.exp(_np_log_softmax(x / T))
    pt = np.exp(_np_log_softmax((1 - t) * x / T + t * lp))
    assert_close(s.grad, torch.from_numpy((q - pt) / T), **TOL)


def test_distillm2_student_rows_detach_the_mixture() -> None:
    """Student rows: ∂/∂s KL(q ‖ m) with m = (1−α)·p + α·sg(q); teacher rows keep the gradient through m's q."""
    s, log_p = _tiny(2)
    a = 0.3
    fs = torch.tensor([True, False, True])
    distillm2_rows(s, log_p, fs, alpha=a).sum().backward()
    x, p = s.detach().numpy(), np.exp(log_p.numpy())
    q = np.exp(_np_log_softmax(x))
    # KL(q ‖ m) with m fixed: ∂L/∂log q = q ⊙ (log q − log m + 1), and the constant 1 drops out of the softmax.
    want = _softmax_grad(q, np.log(q) - np.log((1 - a) * p + a * q), 1.0)
    assert_close(s.grad[fs], torch.from_numpy(want[fs.numpy()]), **TOL)
    # The undetached SRKL (DistiLLM) has a different gradient; the teacher rows equal SKL's.
    x2 = s.detach().clone().requires_grad_(True)
    skew_reverse_kl_rows(x2, log_p, alpha=a).sum().backward()
    assert not torch.allclose(x2.grad[fs], s.grad[fs])
    x3 = s.detach().clone().requires_grad_(True)
    skew_forward_kl_rows(x3, log_p, alpha=a).sum().backward()
    assert_close(s.grad[~fs], x3.grad[~fs], **TOL)


# --- TaidSchedule -----------------------------------------------------------------------------------------------


def test_taid_schedule_defaults() -> None:
    sched = TaidSchedule()
    assert (sched.t_start, sched.t_end, sched.alpha, sched.beta) == (0.4, 1.0, 5e-4, 0.99)
    assert sched.value() == 0.4


def test_taid_schedule_hand_computed_steps() -> None:
    sched = TaidSchedule(t_start=0.4, t_end=1.0, alpha=0.1, beta=0.5)
    sched.update(2.0, progress=0.0)  # the first call only records the loss
    assert sched.value() == 0.4
    # Step 2: δ = (2 − 1.5)/2 = 0.25, m = 0.5·0.25 = 0.125, t + Δt = 0.4 + 0.1·σ(0.125)·0.6 ≈ 0.4319 < the floor.
    sched.update(1.5, progress=0.1)
    assert sched.value() == pytest.approx(0.4 + 0.6 * 0.1)
    # Step 3: δ = 0.5/1.5, m = 0.5·0.125 + 0.5·δ; now t + Δt beats the floor (still 0.46).
    sched.update(1.0, progress=0.1)
    m = 0.5 * 0.125 + 0.5 * (0.5 / 1.5)
    want = 0.46 + 0.1 * (1 / (1 + math.exp(-m))) * (1 - 0.46)
    assert sched.value() == pytest.approx(want, rel=1e-12)
    assert sched.momentum == pytest.approx(m, rel=1e-12)


def test_taid_schedule_monotone_and_clipped() -> None:
    rng = np.random.default_rng(0)
    sched = TaidSchedule(alpha=0.05, beta=0.9)
    seen = [sched.value()]
    for step in range(300):
        sched.update(float(rng.uniform(0.1, 5.0)), progress=step / 400)
        seen.append(sched.value())
    assert all(b >= a for a, b in itertools.pairwise(seen))
    assert max(seen) <= 1.0
    sched.update(1.0, progress=1.7)  # past the end: the floor exceeds t_end, t stays at t_end
    assert sched.value() == 1.0
    # A huge relative rise (prev loss ≈ 0) or a NaN loss: no overflow, no NaN, t unchanged downward.
    sched = TaidSchedule()
    sched.update(1e-300, 0.0)
    sched.update(1e10, 0.1)
    sched.update(float("nan"), 0.2)
    assert math.isfinite(sched.value()) and math.isfinite(sched.momentum)


def test_taid_schedule_state_dict_round_trip() -> None:
    a = TaidSchedule(t_start=0.2, alpha=0.01)
    for i, loss in enumerate([3.0, 2.5, 2.4, 2.6]):
        a.update(loss, i / 10)
    state = a.state_dict()
    assert all(isinstance(v, float) for v in state.values())
    b = TaidSchedule()
    b.load_state_dict(state)
    assert b.state_dict() == state
    a.update(2.0, 0.5)
    b.update(2.0, 0.5)
    assert a.state_dict() == b.state_dict()
    fresh = TaidSchedule()
    fresh.load_state_dict(TaidSchedule().state_dict())
    assert math.isinf(fresh.prev_loss)
