"""The bucket tail of forward KL against a top-k teacher: by hand, by an independent formula, and its validation."""

from __future__ import annotations

import math

import pytest
import torch

from kdforge.errors import ConfigError
from kdforge.objectives import objective
from kdforge.objectives.sparse import sparse_forward_kl
from kdforge.signals import SparseSignal


def test_bucket_tail_by_hand() -> None:
    # Teacher top-1 = id 0 with p = 0.6, tail mass 0.4 over ids 1, 2; student q = (0.5, 0.3, 0.2).
    # Bucket: 0.6·log(0.6/0.5) + 0.4·log(0.4/0.5); uniform: 0.6·log(0.6/0.5) + 0.2·log(0.2/0.3) + 0.2·log(0.2/0.2).
    s = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    signal = SparseSignal(torch.tensor([[0]]), torch.tensor([[math.log(0.6)]]), torch.tensor([math.log(0.4)]), 3)
    bucket = sparse_forward_kl(s, signal, tail="bucket").item()
    uniform = sparse_forward_kl(s, signal, tail="uniform").item()
    assert bucket == pytest.approx(0.6 * math.log(0.6 / 0.5) + 0.4 * math.log(0.4 / 0.5), rel=1e-5)
    assert uniform == pytest.approx(0.6 * math.log(0.6 / 0.5) + 0.2 * math.log(0.2 / 0.3), rel=1e-5)


def test_bucket_tail_equals_a_k_plus_one_way_kl_and_its_gradient_keeps_the_tail_shape() -> None:
    torch.manual_seed(0)
    n, v, k = 6, 40, 5
    s = torch.randn(n, v, requires_grad=True)
    p = torch.softmax(torch.randn(n, v) * 2, -1)
    top, ids = p.topk(k, -1)
    signal = SparseSignal(ids, top.log(), torch.log1p(-top.sum(-1)), v)
    got = sparse_forward_kl(s, signal, T=2.0, tail="bucket")
    # Independent: the teacher at T = 2 (p^(1/2), renormalised over top-k + the uniform tail), then k + 1 outcomes.
    c = (1 - top.sum(-1, keepdim=True)) / (v - k)
    a_top, a_tail = top.sqrt(), c.sqrt() * (v - k)
    z = a_top.sum(-1, keepdim=True) + a_tail
    pt = torch.cat([a_top / z, a_tail / z], -1)
    q = torch.softmax(s / 2.0, -1)
    q_top = q.gather(-1, ids)
    qt = torch.cat([q_top, 1 - q_top.sum(-1, keepdim=True)], -1)
    want = (pt * (pt.log() - qt.log())).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(got.sum(), s)
    # Off the top-k, the gradient is proportional to the student's own probabilities (no pull toward flat).
    mask = torch.ones(n, v, dtype=torch.bool).scatter_(1, ids, False)
    ratio = g[mask].reshape(n, -1) / q[mask].reshape(n, -1)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4, atol=1e-6)


def test_objective_takes_the_tail_mode_and_refuses_an_unknown_one() -> None:
    torch.manual_seed(1)
    s = torch.randn(4, 30)
    p = torch.softmax(torch.randn(4, 30), -1)
    top, ids = p.topk(3, -1)
    signal = SparseSignal(ids, top.log(), torch.log1p(-top.sum(-1)), 30)
    bucket = objective("forward_kl", tail="bucket")(s, signal)
    assert bucket.item() == pytest.approx(sparse_forward_kl(s, signal, tail="bucket").mean().item(), rel=1e-6)
    dense = objective("forward_kl")(s, signal.to_dense_logits())
    assert objective("forward_kl")(s, signal).item() == pytest.approx(dense.item(), rel=1e-5)
    with pytest.raises(ConfigError, match=r"tail='flat' must be one of uniform, bucket"):
        objective("forward_kl", tail="flat")
