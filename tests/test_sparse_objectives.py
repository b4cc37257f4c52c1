"""Sparse-signal kernels: equal to the dense objectives on the reconstruction, a hand-written case, and memory."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import Tensor

import kdforge
from kdforge.evaluate.memory import peak_backward_bytes
from kdforge.objectives.sparse import sparse_forward_kl, sparse_jsd, sparse_reverse_kl, sparse_teacher, sparse_tv
from kdforge.signals import SparseSignal

Kernel = Callable[[Tensor, SparseSignal, float], Tensor]


def _kernel(name: str, beta: float) -> Kernel:
    """The sparse kernel for ``name`` as f(student, signal, T)."""
    if name == "jsd":
        return lambda s, sig, T: sparse_jsd(s, sig, beta=beta, T=T)
    return {"kd": sparse_forward_kl, "reverse_kl": sparse_reverse_kl, "tv": sparse_tv}[name]


def _dense(name: str, beta: float, T: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The registered dense objective as a batch-mean of per-row values (its T² factor divided out)."""
    params: dict[str, Any] = {"T": T, "beta": beta} if name == "jsd" else {"T": T}
    obj = kdforge.objective(name, **params)
    scale = T * T if name in ("kd", "reverse_kl") else 1.0
    # A plain tensor teacher: the dense path, whatever sparse kernels the registry may hold.
    return lambda s, t: obj(s, t) / scale


def _signal(teacher_logits: Tensor, k: int, T_s: float, ids_dtype: torch.dtype = torch.int64) -> SparseSignal:
    """A top-k signal stored at temperature T_s."""
    sig = SparseSignal.from_logits(teacher_logits / T_s, k=k)
    return replace(sig, ids=sig.ids.to(ids_dtype), temperature=T_s)


def _value_and_grad(fn: Callable[[Tensor], Tensor], s: Tensor) -> tuple[Tensor, Tensor]:
    x = s.detach().clone().requires_grad_(True)
    value = fn(x)
    value.backward()
    return value.detach(), x.grad


CASES = [  # (objective, beta, T, T_s)
    ("kd", 0.0, 1.0, 1.0),
    ("kd", 0.0, 2.0, 1.0),
    ("kd", 0.0, 0.5, 1.5),
    ("reverse_kl", 0.0, 1.0, 1.0),
    ("reverse_kl", 0.0, 3.0, 1.0),
    ("reverse_kl", 0.0, 1.0, 2.0),
    ("jsd", 0.5, 1.0, 1.0),
    ("jsd", 0.1, 2.0, 1.0),
    ("jsd", 0.9, 0.7, 1.3),
    ("jsd", 0.0, 2.0, 1.0),
    ("jsd", 1.0, 2.0, 0.5),
    ("tv", 0.0, 1.0, 1.0),
    ("tv", 0.0, 2.0, 1.0),
    ("tv", 0.0, 1.0, 3.0),
]


@pytest.mark.parametrize(("name", "beta", "T", "T_s"), CASES)
def test_matches_dense_objective_on_reconstruction(name: str, beta: float, T: float, T_s: float) -> None:
    # Stores keep ids as int16 / int32 for small vocabularies; each case takes one width in turn.
    ids_dtype = [torch.int64, torch.int32, torch.int16][CASES.index((name, beta, T, T_s)) % 3]
    g = torch.Generator().manual_seed(0)
    N, V, k = 6, 50, 7
    s = torch.randn(N, V, generator=g) * 3
    sig = _signal(torch.randn(N, V, generator=g) * 3, k, T_s, ids_dtype)
    kernel, dense = _kernel(name, beta), _dense(name, beta, T)
    got, got_grad = _value_and_grad(lambda x: kernel(x, sig, T).mean(), s)
    want, want_grad = _value_and_grad(lambda x: dense(x, sig.to_dense_logits()), s)
    assert got.shape == ()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "beta", "T", "T_s"), [c for c in CASES if c[3] == 1.0])
def test_full_top_k_equals_dense_objective_on_original_logits(name: str, beta: float, T: float, T_s: float) -> None:
    g = torch.Generator().manual_seed(1)
    N, V = 5, 40
    s, t = torch.randn(N, V, generator=g) * 2, torch.randn(N, V, generator=g) * 2
    sig = SparseSignal.from_logits(t, k=V)
    got, got_grad = _value_and_grad(lambda x: _kernel(name, beta)(x, sig, T).mean(), s)
    want, want_grad = _value_and_grad(lambda x: _dense(name, beta, T)(x, t), s)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)


def test_per_row_values_and_gradients_reach_the_student() -> None:
    g = torch.Generator().manual_seed(2)
    s = (torch.randn(4, 30, generator=g) * 2).requires_grad_(True)
    sig = _signal(torch.randn(4, 30, generator=g), k=5, T_s=1.0)
    for kernel in (sparse_forward_kl, sparse_reverse_kl, sparse_tv, lambda x, sig, T: sparse_jsd(x, sig, 0.3, T)):
        s.grad = None
        out = kernel(s, sig, 2.0)
        assert out.shape == (4,)
        out.sum().backward()
        assert s.grad is not None and s.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------
# An independent check: V = 5, k = 2, every divergence summed over the full distribution with Python loops.
# ---------------------------------------------------------------------------------------------------------

P_HAT = [0.1, 0.2, 0.1, 0.5, 0.1]  # top-2 at ids 3 and 1; tail mass 0.3 spread over ids 0, 2, 4
STUDENT = [0.3, -1.2, 2.0, 0.5, -0.4]


def _normalize(w: list[float]) -> list[float]:
    total = sum(w)
    return [x / total for x in w]


def _ref(p: list[float], q: list[float], kind: str, beta: float) -> float:
    kl = lambda a, b: sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)  # noqa: E731
    if kind == "forward_kl":
        return kl(p, q)
    if kind == "reverse_kl":
        return kl(q, p)
    if kind == "tv":
        return 0.5 * sum(abs(x - y) for x, y in zip(p, q, strict=True))
    m = [beta * x + (1 - beta) * y for x, y in zip(p, q, strict=True)]
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


@pytest.mark.parametrize(("T", "T_s"), [(1.0, 1.0), (2.0, 1.0), (1.0, 2.0), (0.5, 1.5)])
def test_hand_written_five_class_case(T: float, T_s: float) -> None:
    # The stored log-probs are at T_s; the teacher at T is p̂^(T_s/T), renormalized.
    p = _normalize([x ** (T_s / T) for x in P_HAT])
    q = _normalize([math.exp(z / T) for z in STUDENT])
    sig = SparseSignal(
        ids=torch.tensor([[3, 1]]),
        logprobs=torch.tensor([[math.log(0.5), math.log(0.2)]]),
        tail=torch.tensor([math.log(0.3)]),
        vocab_size=5,
        temperature=T_s,
    )
    log_top, log_c, r = sparse_teacher(sig, T)
    assert r == 3
    torch.testing.assert_close(log_top.exp(), torch.tensor([[p[3], p[1]]]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(log_c.exp(), torch.tensor([p[0]]), rtol=1e-6, atol=1e-7)
    s = torch.tensor([STUDENT])
    checks = [
        (sparse_forward_kl(s, sig, T), "forward_kl", 0.0),
        (sparse_reverse_kl(s, sig, T), "reverse_kl", 0.0),
        (sparse_tv(s, sig, T), "tv", 0.0),
        (sparse_jsd(s, sig, beta=0.3, T=T), "jsd", 0.3),
        (sparse_jsd(s, sig, beta=0.0, T=T), "forward_kl", 0.0),
        (sparse_jsd(s, sig, beta=1.0, T=T), "reverse_kl", 0.0),
    ]
    for got, kind, beta in checks:
        assert got.shape == (1,)
        assert math.isclose(got.item(), _ref(p, q, kind, beta), rel_tol=1e-5, abs_tol=1e-6), kind


def test_no_nan_where_the_student_probability_underflows() -> None:
    # Student logits 300 apart: softmax is exactly 0 at many ids; the teacher tail at T = 0.25 underflows too.
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 20, generator=g)
    s[:, :5] -= 300.0
    sig = _signal(torch.randn(3, 20, generator=g) * 4, k=4, T_s=1.0)
    for name, beta in [("kd", 0.0), ("jsd", 0.5), ("jsd", 0.2), ("tv", 0.0)]:
        got, grad = _value_and_grad(lambda x, n=name, b=beta: _kernel(n, b)(x, sig, 0.25).mean(), s)
        want, want_grad = _value_and_grad(lambda x, n=name, b=beta: _dense(n, b, 0.25)(x, sig.to_dense_logits()), s)
        assert torch.isfinite(got) and torch.isfinite(grad).all(), name
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Memory: the peak of live tensor bytes during forward + backward, at a language-model vocabulary.
# ---------------------------------------------------------------------------------------------------------


def _peak_bytes(loss: Callable[[Tensor], Tensor], s: Tensor, sig: SparseSignal) -> int:
    """Peak live bytes of loss(s).backward(), the student's .grad included."""
    return peak_backward_bytes(loss, s, sig.ids, sig.logprobs, sig.tail)


def test_memory_no_vocabulary_sized_teacher_tensor() -> None:
    N, V, k, T = 256, 49_152, 64, 2.0
    NV4 = N * V * 4
    g = torch.Generator().manual_seed(4)
    s = torch.randn(N, V, generator=g).requires_grad_(True)
    # Built directly (distinct ids per row, top-k mass 0.4–0.9): from_logits would sort 12.6M values, for nothing here.
    ids = (torch.arange(N)[:, None] * 7 + torch.arange(k) * 701) % V
    kept = 0.4 + 0.5 * torch.rand(N, generator=g)
    logprobs = torch.log_softmax(torch.randn(N, k, generator=g) * 2, dim=-1) + kept.log()[:, None]
    sig = SparseSignal(ids=ids, logprobs=logprobs, tail=torch.log1p(-kept), vocab_size=V)

    def baseline(x: Tensor) -> Tensor:
        # What the student alone costs: its log-probs and entropy at T.
        log_q = torch.log_softmax(x / T, dim=-1)
        return (log_q.exp() * log_q).sum(-1).mean()

    base = _peak_bytes(baseline, s, sig)
    peaks = {
        "forward_kl": _peak_bytes(lambda x: sparse_forward_kl(x, sig, T).mean(), s, sig),
        "forward_kl dense": _peak_bytes(lambda x: _dense("kd", 0.0, T)(x, sig.to_dense_logits()), s, sig),
        "jsd": _peak_bytes(lambda x: sparse_jsd(x, sig, 0.5, T).mean(), s, sig),
        "jsd dense": _peak_bytes(lambda x: _dense("jsd", 0.5, T)(x, sig.to_dense_logits()), s, sig),
        "reverse_kl": _peak_bytes(lambda x: sparse_reverse_kl(x, sig, T).mean(), s, sig),
    }
    print(f"\npeak live bytes, N={N} V={V} k={k}: one (N, V) float32 = {NV4 / 2**20:.1f} MB")
    print(f"  student-only baseline: {base / 2**20:.1f} MB")
    for name, peak in peaks.items():
        print(f"  {name}: {peak / 2**20:.1f} MB ({peak / NV4:.2f} × N·V·4)")
    for name in ("forward_kl", "jsd"):
        assert peaks[name] < peaks[f"{name} dense"] - NV4, name
    for name in ("forward_kl", "reverse_kl"):
        assert peaks[name] - base < NV4, name
    # JSD also holds the mixture m = β·c + (1−β)·q and its log: student-sized, one more (N, V) than the baseline at
    # the peak; a teacher (N, V) tensor on top would add at least one more.
    assert peaks["jsd"] - base < 2 * NV4


@pytest.mark.parametrize(
    ("name", "params"),
    [("kd", {"T": 2.0, "alpha": 0.7}), ("reverse_kl", {"T": 1.5}), ("jsd", {"beta": 0.3}), ("tv", {})],
)
def test_registered_objectives_take_a_sparse_signal_through_their_kernel(name: str, params: dict) -> None:
    # Called with the SparseSignal itself, the registered objective uses the sparse kernel; the value equals the
    # dense objective on the signal's reconstruction, and at k = V on the original logits.
    torch.manual_seed(0)
    s, t = torch.randn(6, 40, requires_grad=True), torch.randn(6, 40) * 3
    y = torch.randint(0, 40, (6,))
    obj = kdforge.objective(name, **params)
    sparse = SparseSignal.from_logits(t, k=8)
    assert torch.allclose(obj(s, sparse, y), obj(s, sparse.to_dense_logits(), y), rtol=1e-5, atol=1e-6)
    assert torch.allclose(obj(s, SparseSignal.from_logits(t, k=40), y), obj(s, t, y), rtol=1e-5, atol=1e-6)
