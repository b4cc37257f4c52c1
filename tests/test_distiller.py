"""The bring-your-own-loop Distiller: terms, teacher isolation, export, early shape and label checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdforge
from kdforge.engine.distiller import Distiller
from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.teachers import Live, PastSelf


def _pair(classes_t: int = 5, classes_s: int = 5) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, classes_t))
    student = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, classes_s))
    return teacher, student


def _batch(n: int = 8) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {"input": torch.randn(n, 6), "label": torch.randint(0, 5, (n,)), "index": torch.arange(n)}


def test_loss_is_weighted_sum_of_independently_computed_terms():
    teacher, student = _pair()
    d = kdforge.Distiller(student, teacher, {"ce": 0.1, "kd": {"weight": 0.9, "T": 4}})
    batch = _batch()
    out = d(batch)
    s, t = student(batch["input"]), teacher(batch["input"])
    ce = F.cross_entropy(s, batch["label"])
    kd = F.kl_div(F.log_softmax(s / 4, -1), F.softmax(t / 4, -1), reduction="batchmean") * 16
    assert out.terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert out.terms["kd"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(0.1 * ce.item() + 0.9 * kd.item(), rel=1e-5)
    assert out.student_logits.shape == (8, 5)


def test_teacher_runs_without_autograd_and_gets_no_gradient():
    teacher, student = _pair()
    live = Live(teacher)
    d = Distiller(student, live, {"kd": 1.0})
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append((torch.is_inference_mode_enabled(), o.requires_grad)))
    out = d(_batch())
    out.loss.backward()
    assert calls == [(True, False)], "teacher forward must run under inference_mode and build no graph"
    assert out.teacher.logits.logits.grad_fn is None
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_teacher_is_not_asked_when_no_objective_needs_it():
    teacher, student = _pair()
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    Distiller(student, teacher, {"ce": 1.0})(_batch())
    assert calls == []


def test_export_returns_plain_student_without_hooks():
    teacher, student = _pair()
    d = Distiller(student, teacher, {"kd": 1.0})
    d(_batch())
    exported = d.export()
    assert exported is student
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in exported.modules())
    assert not any(isinstance(m, Distiller) for m in exported.modules())


def test_shape_mismatch_names_both_shapes_before_any_loss():
    teacher, student = _pair(classes_t=10, classes_s=5)
    with pytest.raises(ShapeMismatchError, match=r"teacher logits shape \(8, 10\).*student logits shape \(8, 5\)"):
        Distiller(student, teacher, {"kd": 1.0})(_batch())


def test_missing_labels_and_missing_teacher_are_clear_errors():
    teacher, student = _pair()
    with pytest.raises(ConfigError, match=r"objectives \['ce'\] need labels"):
        Distiller(student, teacher, {"ce": 1.0})({"input": torch.randn(4, 6)})
    with pytest.raises(ConfigError, match=r"objectives \['kd'\] need a teacher"):
        Distiller(student, None, {"kd": 1.0})
    with pytest.raises(ConfigError, match=r"objectives\.kd: objective 'kd' has no parameter 'temperature'"):
        Distiller(student, teacher, {"kd": {"temperature": 3}})
    with pytest.raises(ConfigError, match=r"unknown objective 'kdd'"):
        Distiller(student, teacher, {"kdd": 1.0})
    # Per-token labels for a classifier (or class labels for a sequence model) fail before any loss.
    with pytest.raises(ShapeMismatchError, match=r"labels of shape \(4, 3\) do not fit student logits of shape"):
        Distiller(student, teacher, {"ce": 1.0})({"input": torch.randn(4, 6), "label": torch.zeros(4, 3).long()})


def test_tuple_batches_and_step_counter_for_warmup():
    teacher, student = _pair()
    d = Distiller(student, teacher, {"kd": {"weight": 1.0, "warmup_steps": 4}})
    x, y = _batch()["input"], _batch()["label"]
    first = d((x, y))
    assert first.loss.item() == 0.0  # weight ramps from zero at step 0
    d((x, y))
    third = d((x, y))
    assert third.weighted["kd"].item() == pytest.approx(0.5 * third.terms["kd"].item())


def test_past_self_teacher_feeds_pskd_with_last_epoch_predictions():
    _, student = _pair()
    past = PastSelf(num_samples=8, num_classes=5)
    d = Distiller(student, past, {"pskd": {"alpha_T": 0.8}})
    batch = _batch()
    first = d(batch, progress=0.5)
    # No history yet: the target is the label itself, so PS-KD equals CE.
    ce = F.cross_entropy(first.student_logits, batch["label"])
    assert first.terms["pskd"].item() == pytest.approx(ce.item(), rel=1e-4)
    assert past.seen.all() and torch.allclose(past.logits, first.student_logits.detach())
    second = d(batch, progress=0.5)
    target = 0.6 * F.one_hot(batch["label"], 5) + 0.4 * F.softmax(first.student_logits.detach(), -1)
    expected = -(target * F.log_softmax(second.student_logits, -1)).sum(-1).mean()
    assert second.terms["pskd"].item() == pytest.approx(expected.item(), rel=1e-5)
