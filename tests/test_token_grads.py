"""Closed-form gradients of the token divergences: equal to autograd of the row functions, finite under masks, and
the reason they exist — the chunked engine's peak memory with them stays a few (chunk × vocabulary) buffers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from kdforge.evaluate.memory import PeakBytes
from kdforge.objectives import objective
from kdforge.objectives import token_math as tm
from kdforge.objectives.chunked import ChunkPlan, chunked_row_sums
from kdforge.signals import HeadSignal, Progress

FKL = (tm.forward_kl_rows, tm.forward_kl_rows_grad)
RKL = (tm.reverse_kl_rows, tm.reverse_kl_rows_grad)
CASES = [
    ("forward_kl", lambda s, lp, T, b: FKL[0](s, lp, T), lambda s, lp, T, b: FKL[1](s, lp, T)),
    ("reverse_kl", lambda s, lp, T, b: RKL[0](s, lp, T), lambda s, lp, T, b: RKL[1](s, lp, T)),
    ("jsd", lambda s, lp, T, b: tm.jsd_rows(s, lp, b, T), lambda s, lp, T, b: tm.jsd_rows_grad(s, lp, b, T)),
    ("taid", lambda s, lp, T, b: tm.taid_rows(s, lp, b), lambda s, lp, T, b: tm.taid_rows_grad(s, lp, b)),
]


def _inputs(seed: int, n: int = 7, v: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, v, generator=g, dtype=torch.float64) * 3
    log_p = torch.log_softmax(torch.randn(n, v, generator=g, dtype=torch.float64) * 3, -1)
    return s, log_p


def _autograd(rows_fn, s: torch.Tensor, log_p: torch.Tensor, T: float, b: float):
    x = s.clone().requires_grad_()
    rows = rows_fn(x, log_p, T, b)
    (g,) = torch.autograd.grad(rows.sum(), x)
    return rows.detach(), g


@pytest.mark.parametrize(("name", "rows_fn", "grad_fn"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize(("T", "b"), [(1.0, 0.5), (2.0, 0.3), (0.7, 0.0), (1.5, 1.0), (1.0, 0.9)])
def test_closed_form_equals_autograd(name: str, rows_fn, grad_fn, T: float, b: float) -> None:
    if name == "taid":
        T = 1.0  # TAID has no temperature; b is its interpolation t here
    s, log_p = _inputs(0)
    want_rows, want_g = _autograd(rows_fn, s, log_p, T, b)
    rows, g = grad_fn(s, log_p, T, b)
    assert_close(rows, want_rows, rtol=1e-10, atol=1e-12)
    assert_close(g, want_g, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("name", "rows_fn", "grad_fn"), [c for c in CASES if c[0] != "reverse_kl"], ids=lambda c: c)
def test_closed_form_with_masked_teacher_ids_is_finite_and_equal(name: str, rows_fn, grad_fn) -> None:
    s, log_p = _inputs(1)
    log_p[:, :5] = -math.inf  # ids the teacher gives no mass (reverse KL is +inf there by definition)
    log_p = log_p - torch.logsumexp(log_p, -1, keepdim=True)
    b = 0.4
    want_rows, want_g = _autograd(rows_fn, s, log_p, 1.0, b)
    rows, g = grad_fn(s, log_p, 1.0, b)
    assert torch.isfinite(rows).all() and torch.isfinite(g).all()
    assert_close(rows, want_rows, rtol=1e-10, atol=1e-12)
    assert_close(g, want_g, rtol=1e-9, atol=1e-12)


def test_jsd_gradient_by_hand() -> None:
    # One row, two ids: q = (1/2, 1/2), p = (1, 0), beta = 1/2 → m = (3/4, 1/4). ∂/∂q = ½·(log q − log m); the
    # softmax Jacobian at q = (½, ½) gives ∂/∂s0 = ¼·(g0 − g1) = ⅛·(log(2/3) − log 2) = −⅛·log 3.
    s = torch.zeros(1, 2, dtype=torch.float64)
    log_p = torch.tensor([[0.0, -math.inf]], dtype=torch.float64)
    rows, g = tm.jsd_rows_grad(s, log_p, 0.5)
    expected = 0.5 * math.log(4 / 3) + 0.5 * (0.5 * math.log(2 / 3) + 0.5 * math.log(2))
    assert rows.item() == pytest.approx(expected, rel=1e-12)
    assert g[0, 0].item() == pytest.approx(-math.log(3) / 8, rel=1e-12)
    assert g[0, 1].item() == pytest.approx(math.log(3) / 8, rel=1e-12)


def _progress() -> Progress:
    return Progress(step=0, epoch=0.0, progress=0.3)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "taid"])
def test_engine_closed_form_path_equals_its_autograd_path(name: str) -> None:
    torch.manual_seed(3)
    n, h, v = 40, 8, 50
    hidden = torch.randn(n, h, requires_grad=True)
    head = torch.nn.Linear(h, v + 6, bias=True)  # a padded head: the 6 extra rows are never compared
    signal = HeadSignal(torch.randn(n, h), torch.randn(v, h))
    fn = objective(name).row_fn(_progress())
    assert hasattr(fn, "grad")

    def run(f) -> tuple[torch.Tensor, ...]:
        total = chunked_row_sums(hidden, head, ChunkPlan([f], signal, None, 16, v))[0]
        return (total.detach(), *torch.autograd.grad(total, [hidden, head.weight, head.bias]))

    closed = run(fn)
    plain = run(lambda s, t, y: fn(s, t, y))  # the same rows without the closed form: the autograd path
    for a, b in zip(closed, plain, strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert torch.count_nonzero(closed[2][v:]) == 0


@pytest.mark.parametrize("name", ["forward_kl", "jsd"])
def test_chunked_peak_stays_a_few_chunk_buffers(name: str) -> None:
    # Why the closed forms exist: autograd kept ~25 (chunk × V) float32 buffers alive for JSD.
    torch.manual_seed(4)
    n, h, v, chunk = 256, 16, 4096, 64
    hidden = torch.randn(n, h, requires_grad=True)
    head = torch.nn.Linear(h, v, bias=False)
    signal = HeadSignal(torch.randn(n, h), torch.randn(v, h))
    fn = objective(name).row_fn(_progress())
    with PeakBytes(hidden, head.weight, signal.hidden, signal.weight) as mode:
        total = chunked_row_sums(hidden, head, ChunkPlan([fn], signal, None, chunk, v))[0]
        total.backward()
    buffer = chunk * v * 4
    fixed = 2 * head.weight.numel() * 4 + 2 * hidden.numel() * 4  # gradient accumulators and grads
    assert (mode.peak - fixed) / buffer <= 7, (mode.peak - fixed) / buffer  # 5 measured for forward KL, 6 for JSD
