"""OFA-KD: the target-enhanced loss (golden, explicit loops, reference parity), its branches and the Distiller path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdforge import Distiller
from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.models import build_model
from kdforge.models.stages import feature_stages
from kdforge.objectives import objective
from kdforge.objectives.base import BuildContext, PairContext
from kdforge.objectives.ofa import TokenBranch, build_branches, map_branch, ofa_loss, target_mask
from kdforge.signals import DenseSignal, StudentOutput, TeacherOutput

PARITY = Path(__file__).parent / "data" / "parity" / "ofa.json"


def _logits(g: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = g or torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g) * 2
    return s, t, torch.tensor([0, 3, 1, 4, 2, -100])


def _loops(s: np.ndarray, t: np.ndarray, labels: list[int], eps: float, T: float) -> float:
    """−Σ_c [(p_t + y)^ε − y]_c log p_s,c per row, then the mean: written out with Python loops in float64."""
    total = 0.0
    for row in range(s.shape[0]):
        zs, zt = s[row] / T, t[row] / T
        log_norm = math.log(sum(math.exp(v) for v in zs))
        p_t = [math.exp(v) / sum(math.exp(w) for w in zt) for v in zt]
        for c in range(s.shape[1]):
            y = 1.0 if labels[row] == c else 0.0
            total -= ((p_t[c] + y) ** eps - y) * (zs[c] - log_norm)
    return total / s.shape[0]


def test_ofa_loss_golden_value() -> None:
    s, t, y = _logits()
    assert ofa_loss(s, t, target_mask(y, s), 1.5, 1.0).item() == pytest.approx(1.7067142724990845, rel=1e-4)
    assert ofa_loss(s, t, target_mask(y, s), 1.0, 3.0).item() == pytest.approx(1.6401920318603516, rel=1e-4)


@pytest.mark.parametrize(("eps", "T"), [(1.0, 1.0), (1.5, 1.0), (1.2, 4.0), (0.7, 2.0)])
def test_ofa_loss_matches_explicit_loops(eps: float, T: float) -> None:
    s, t, y = _logits()
    expected = _loops(s.double().numpy(), t.double().numpy(), y.tolist(), eps, T)
    got = ofa_loss(s.double(), t.double(), target_mask(y, s).double(), eps, T)
    torch.testing.assert_close(got.item(), expected, rtol=1e-10, atol=1e-12)


def test_eps_one_is_cross_entropy_with_the_teacher_distribution() -> None:
    # ε = 1: (p_t + y) − y = p_t, so the label drops out and the loss is −Σ p_t log p_s (KD without the entropy).
    s, t, y = _logits()
    expected = -(t.softmax(-1) * s.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(ofa_loss(s, t, target_mask(y, s), 1.0), expected, rtol=1e-6, atol=1e-7)


def test_ofa_loss_matches_the_reference_implementation() -> None:
    fixture = json.loads(PARITY.read_text())
    assert fixture["source"]["repo"] == "Hao840/OFAKD" and fixture["source"]["path"] == "distillers/ofa.py"
    inputs = fixture["inputs"]
    s, t = torch.tensor(inputs["student_logits"]), torch.tensor(inputs["teacher_logits"])
    labels = torch.tensor(inputs["labels"])
    p = fixture["params"]
    got = ofa_loss(s, t, target_mask(labels, s), p["eps"], p["temperature"])
    assert got.item() == pytest.approx(fixture["value"], rel=1e-4)


def test_target_mask_takes_the_argmax_of_soft_labels_and_zeros_unlabeled_rows() -> None:
    logits = torch.zeros(3, 4)
    soft = torch.tensor([[0.1, 0.7, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.0, 0.0, 0.1, 0.9]])
    assert target_mask(soft, logits).argmax(-1).tolist() == [1, 0, 3]
    assert target_mask(torch.tensor([2, -100, 0]), logits).sum(-1).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ShapeMismatchError, match=r"labels of shape \(2,\)"):
        target_mask(torch.tensor([0, 1]), logits)


def _fixed_branches() -> nn.ModuleList:
    a, b = nn.Linear(4, 5), nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    with torch.no_grad():
        a.weight.copy_(torch.linspace(-1, 1, 20).reshape(5, 4))
        a.bias.fill_(0.1)
        b[1].weight.copy_(torch.linspace(1, -1, 60).reshape(5, 12))
        b[1].bias.zero_()
    return nn.ModuleList([a, b])


def test_objective_sums_every_branch_and_the_final_logits() -> None:
    g = torch.Generator().manual_seed(0)
    s, t, _ = _logits(g)
    fa, fb = torch.randn(6, 4, generator=g), torch.randn(6, 3, 2, 2, generator=g)
    y = torch.tensor([0, 3, 1, 4, 2, 0])
    branches = _fixed_branches()
    obj = objective("ofa", stages=["a", "b"], eps=[1.0, 1.5, 1.2], T=2.0)
    pair = PairContext(
        StudentOutput(s, {"a": fa, "b": fb}), TeacherOutput(logits=DenseSignal(t)), y, connector=branches
    )
    value = obj.compute(pair)
    assert value.item() == pytest.approx(4.64263391494751, rel=1e-4)
    np_t = t.double().numpy()
    with torch.no_grad():
        za, zb = branches[0](fa).double().numpy(), branches[1](fb).double().numpy()
    expected = sum(_loops(z, np_t, y.tolist(), e, 2.0) for z, e in ((za, 1.0), (zb, 1.5), (s.double().numpy(), 1.2)))
    torch.testing.assert_close(value.item(), expected, rtol=1e-5, atol=1e-6)
    no_final = objective("ofa", stages=["a", "b"], eps=[1.0, 1.5], T=2.0, final=False).compute(pair)
    final_only = ofa_loss(s, t, target_mask(y, s), 1.2, 2.0)
    torch.testing.assert_close(no_final + final_only, value, rtol=1e-6, atol=1e-6)


def _cnn_teacher() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cnn", 10, (1, 12, 12), widths=(8, 16))


def _batch(n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input": torch.randn(n, 1, 12, 12, generator=g), "label": torch.randint(0, 10, (n,), generator=g)}


def _train_step(distiller: Distiller) -> dict[str, torch.Tensor]:
    batch = _batch()
    distiller.prepare(batch)
    distiller.train()
    out = distiller(batch)
    out.loss.backward()
    return out.terms


def test_cnn_teacher_teaches_an_mlp_student_through_linear_branches() -> None:
    teacher = _cnn_teacher()
    student = build_model("mlp", 10, (1, 12, 12), hidden=(32, 16))
    distiller = Distiller(student, teacher, {"ce": 1.0, "ofa": {"eps": 1.5}})
    params = distiller.terms["ofa"].objective.params
    assert params["stages"] == feature_stages(student)  # every student stage by default
    assert params["width"] == 16  # max(student embedding 16, teacher embedding 16)
    terms = _train_step(distiller)
    assert torch.isfinite(terms["ofa"])
    branches = distiller.connectors["ofa"]
    assert [type(b) for b in branches] == [nn.Linear, nn.Linear]  # (B, C) vectors → linear to the classes
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in branches.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert distiller.export() is student


def test_cnn_student_gets_separable_conv_branches_and_trains_them() -> None:
    teacher = _cnn_teacher()
    student = build_model("cnn", 10, (1, 12, 12), widths=(4, 8))
    distiller = Distiller(student, teacher, {"ofa": {"eps": [1.0, 1.5, 1.2]}})
    _train_step(distiller)
    first, last = distiller.connectors["ofa"]
    assert isinstance(first[0][0], nn.Conv2d) and first[0][0].stride == (2, 2)  # one stride-2 block to the deepest
    assert first[-1].in_features == 16 and isinstance(last[0], nn.Conv2d) and last[0].kernel_size == (1, 1)
    assert all(p.grad is not None for p in distiller.connectors["ofa"].parameters())


class TinyViT(nn.Module):
    """Patches → two transformer blocks → mean token → head: a token student for the CNN teacher."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 16, 4, stride=4)
        self.layers = nn.ModuleList([nn.TransformerEncoderLayer(16, 2, 32, 0.0, batch_first=True) for _ in range(2)])
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean(1))


def test_token_student_gets_transformer_branches() -> None:
    torch.manual_seed(0)
    distiller = Distiller(TinyViT(), _cnn_teacher(), {"ofa": 1.0})
    assert distiller.terms["ofa"].objective.params["stages"] == ["layers.0", "layers.1"]
    _train_step(distiller)
    branches = distiller.connectors["ofa"]
    assert all(isinstance(b, TokenBranch) and len(b.blocks) == 1 for b in branches)
    assert all(p.grad is not None for p in branches.parameters())


def test_branch_shapes_for_maps_and_token_grids() -> None:
    assert map_branch(8, 2, 32, 7)(torch.randn(2, 8, 16, 16)).shape == (2, 7)
    merged = TokenBranch(196, 24, 2, 32, 7)  # a 14×14 grid merges once to 7×7, as the reference's
    assert len(merged.merge) == 1 and merged(torch.randn(2, 196, 24)).shape == (2, 7)
    assert len(TokenBranch(50, 24, 1, 24, 7).merge) == 0  # 49 patches + a class token: no grid, no merging


def test_errors_name_the_stage_the_shape_and_the_parameter() -> None:
    teacher, student = _cnn_teacher(), build_model("mlp", 10, (1, 12, 12), hidden=(32, 16))
    distiller = Distiller(student, teacher, {"ofa": {"stages": ["1", "nope"]}})
    with pytest.raises(ConfigError, match="no module 'nope'"):
        distiller.prepare(_batch())
    with pytest.raises(ConfigError, match=r"objectives\.ofa\.eps: 2 values for 3 branches"):
        Distiller(student, teacher, {"ofa": {"eps": [1.0, 1.5]}})
    with pytest.raises(ConfigError, match=r"objectives\.ofa\.eps=-1"):
        Distiller(student, teacher, {"ofa": {"eps": -1}})
    ctx = BuildContext("ofa", StudentOutput(torch.zeros(2, 10), {"v": torch.zeros(2, 3, 4, 5, 6)}), TeacherOutput(), 10)
    with pytest.raises(ShapeMismatchError, match=r"stage 'v' gives a feature of shape \(2, 3, 4, 5, 6\)"):
        build_branches({"stages": ["v"], "width": 8}, ctx)
    unlabeled = {"input": _batch()["input"]}
    needs_labels = Distiller(student, teacher, {"ofa": 1.0})
    needs_labels.prepare(unlabeled)
    with pytest.raises(ConfigError, match=r"objectives \['ofa'\] need labels"):
        needs_labels(unlabeled)
    s, t, y = _logits()
    unbuilt = PairContext(StudentOutput(s, {"a": s}), TeacherOutput(logits=DenseSignal(t)), y)
    with pytest.raises(ConfigError, match="branches are not built"):
        objective("ofa", stages=["a"]).compute(unbuilt)
