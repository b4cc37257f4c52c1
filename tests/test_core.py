"""Registry, signals, Recorder and Balancer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdforge.capture import Recorder
from kdforge.engine.balancer import Balancer, warmup_factor
from kdforge.errors import ConfigError
from kdforge.registry import Registry
from kdforge.signals import DenseSignal, Needs, SparseSignal


def test_registry_register_get_and_unknown_name_lists_valid():
    reg: Registry = Registry("widget")

    @reg.register("alpha")
    def alpha() -> int:
        return 1

    reg.register("beta")(lambda: 2)
    assert reg.get("alpha") is alpha and reg.names() == ["alpha", "beta"] and "beta" in reg
    with pytest.raises(ConfigError, match=r"unknown widget 'alpah'.*Did you mean 'alpha'.*alpha, beta"):
        reg.get("alpah")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(lambda: 3)


def test_sparse_signal_from_logits_reconstructs_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 50)
    sig = SparseSignal.from_logits(logits, k=8)
    assert sig.ids.shape == (3, 5, 8) and sig.tail.shape == (3, 5)
    dense = sig.to_dense_logprobs()
    # Total mass is conserved: top-k + spread tail sums to 1.
    assert torch.allclose(dense.exp().sum(-1), torch.ones(3, 5), atol=1e-5)
    full = torch.log_softmax(logits, -1)
    assert torch.allclose(dense.gather(-1, sig.ids), full.gather(-1, sig.ids), atol=1e-6)
    with pytest.raises(ValueError, match="tail shape"):
        SparseSignal(sig.ids, sig.logprobs, sig.tail[:, :2], 50)


def test_needs_union():
    a = Needs(teacher_logits=True, student_features=("a",))
    b = Needs(labels=True, student_features=("a", "b"), teacher_features=("t",))
    u = a | b
    assert u == Needs(True, True, ("a", "b"), ("t",))


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 3)))


def test_recorder_captures_outputs_and_removes_hooks():
    net = _net()
    rec = Recorder(net, ["0", "2.1"])
    x = torch.randn(2, 1, 8, 8)
    with rec:
        y = net(x)
    assert rec.tensors["0"].shape == (2, 4, 6, 6)
    assert torch.equal(rec.tensors["2.1"], y)
    rec.remove()
    assert all(not m._forward_hooks for m in net.modules())


def test_recorder_keeps_the_output_an_inplace_relu_overwrites():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    x = torch.randn(16, 4)
    with Recorder(model, ["0"]) as rec:
        model(x).sum().backward()
    expected = model[0](x)
    assert bool((expected < 0).any())  # there are negative pre-activations for the ReLU to zero
    torch.testing.assert_close(rec.tensors["0"], expected)
    assert rec.tensors["0"].grad_fn is not None  # still part of the graph: feature losses train through it


def test_recorder_unknown_path_lists_closest():
    with pytest.raises(ConfigError, match=r"no module '2\.2'.*Closest valid paths: .*2\.1"):
        Recorder(_net(), ["2.2"])


def test_balancer_static_and_linear_warmup():
    bal = Balancer({"ce": 0.5, "kd": 2.0}, {"kd": 10})
    terms = {"ce": torch.tensor(2.0), "kd": torch.tensor(3.0)}
    total, weighted = bal.combine(terms, step=5)
    assert weighted["ce"].item() == pytest.approx(1.0)
    assert weighted["kd"].item() == pytest.approx(2.0 * 0.5 * 3.0)
    assert total.item() == pytest.approx(1.0 + 3.0)
    assert bal.combine(terms, step=100)[1]["kd"].item() == pytest.approx(6.0)
    assert warmup_factor(0, 0) == 1.0 and warmup_factor(3, 4) == 0.75


def test_dense_signal_is_frozen():
    sig = DenseSignal(torch.zeros(2, 3))
    with pytest.raises(AttributeError):
        sig.logits = torch.ones(2, 3)  # type: ignore[misc]
