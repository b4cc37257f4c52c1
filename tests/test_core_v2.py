"""Core v2 seams with real modules on real (digits) data: several students, connectors, EMA, adapters, selection."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from pydantic import ConfigDict
from safetensors.torch import load_file
from torch import nn

import kdforge
from kdforge.adapters import adapter_for
from kdforge.data import load_dataset, make_loader
from kdforge.engine.callbacks import Callback
from kdforge.engine.distiller import Distiller
from kdforge.engine.rundir import RunDir
from kdforge.engine.trainer import Trainer
from kdforge.errors import ConfigError
from kdforge.models import build_model
from kdforge.recipe import TrainConfig, validate
from kdforge.registry import TEACHERS
from kdforge.signals import Needs
from kdforge.teachers import Ema, Live, Teacher


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _mlp(bundle, hidden=(32,), seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", 10, bundle.input_shape, hidden=hidden)


def _loaders(bundle, batch=64):
    return make_loader(bundle.train, batch, shuffle=True, seed=0), {
        "val": make_loader(bundle.val, 512, shuffle=False, seed=0)
    }


def _cfg(**kw: Any) -> TrainConfig:
    return TrainConfig(optimizer={"name": "adamw", "lr": 0.01}, **kw)


def test_two_students_teach_each_other_in_one_loop(digits):
    a, b = _mlp(digits, seed=1), _mlp(digits, seed=2)
    objectives = {
        "ce_a": {"objective": "ce", "pair": "a <- b"},
        "ce_b": {"objective": "ce", "pair": "b <- a"},
        "kl_a": {"objective": "kd", "T": 2.0, "pair": "a <- b"},
        "kl_b": {"objective": "kd", "T": 2.0, "pair": "b <- a"},
    }
    distiller = Distiller({"a": a, "b": b}, None, objectives)
    # The teaching side is detached: a's KL term sends no gradient into b.
    batch = make_loader(digits.train, 32, shuffle=False, seed=0).__iter__().__next__()
    out = distiller(batch)
    out.terms_grad = torch.autograd.grad(
        distiller.terms["kl_a"].objective.compute(
            distiller._pair(distiller.terms["kl_a"], batch, out.outputs, {}, kdforge.signals.Progress())
        ),
        list(b.parameters()),
        allow_unused=True,
    )
    assert all(g is None for g in out.terms_grad)
    before = {k: p.detach().clone() for k, p in distiller.named_parameters()}
    train, evals = _loaders(digits)
    result = Trainer(distiller, _cfg(epochs=3), seed=0).fit(train, evals)
    assert result.last["val"]["accuracy"] > 0.85 and result.last["val@b"]["accuracy"] > 0.85
    moved = {k for k, p in distiller.named_parameters() if not torch.equal(p, before[k])}
    assert any(k.startswith("students.a.") for k in moved) and any(k.startswith("students.b.") for k in moved)


def test_connector_is_built_on_the_first_batch_optimized_and_checkpointed(digits, tmp_path):
    teacher = _mlp(digits, hidden=(64,), seed=3)
    student = _mlp(digits, hidden=(16,), seed=4)
    objectives = {"ce": 1.0, "hint": {"student_layer": "1", "teacher_layer": "1", "connector": "linear", "weight": 0.1}}
    distiller = Distiller(student, teacher, objectives)
    seen: dict[str, int] = {}

    class CountParams(Callback):
        def on_fit_start(self, trainer: Trainer) -> None:
            seen["trained"] = sum(p.numel() for p in trainer.distiller.parameters_to_train())

    run = RunDir(tmp_path / "run")
    train, evals = _loaders(digits)
    Trainer(distiller, _cfg(epochs=1), run_dir=run, seed=0, callbacks=[CountParams()]).fit(train, evals)
    connector = distiller.connectors["hint"][0]  # one connector per layer pair
    assert isinstance(connector, nn.Linear) and connector.weight.shape == (64, 16)
    n_student = sum(p.numel() for p in student.parameters())
    assert seen["trained"] == n_student + 16 * 64 + 64  # the connector is in the optimizer, not left out
    saved = load_file(str(run.checkpoints / "last" / "modules.safetensors"))
    assert torch.equal(saved["connector.hint/0.weight"], connector.weight.detach())
    exported = distiller.export()
    assert exported is student and not any(m._forward_hooks for m in student.modules())


def test_ema_teacher_updates_once_per_optimizer_step_under_accumulation(digits):
    student = _mlp(digits, seed=5)
    ema = Ema(decay=0.9)
    distiller = Distiller(student, ema, {"ce": 1.0, "kd": {"weight": 0.5, "T": 2.0}})
    start = {k: v.clone() for k, v in ema.model.state_dict().items()}
    steps: list[int] = []

    class Watch(Callback):
        def on_optimizer_step(self, trainer: Trainer, step: int) -> None:
            steps.append(ema.updates)

    train, evals = _loaders(digits, batch=32)
    result = Trainer(distiller, _cfg(epochs=1, grad_accum=3), seed=0, callbacks=[Watch()]).fit(train, evals)
    assert ema.updates == result.steps == len(steps) and steps == list(range(1, result.steps + 1))
    assert result.steps == -(-len(train) // 3)
    # One more update by hand follows the formula exactly (same ops, same order).
    want = {k: 0.9 * v + 0.1 * student.state_dict()[k] for k, v in ema.model.state_dict().items()}
    ema.on_optimizer_step(result.steps + 1)
    for k, v in ema.model.state_dict().items():
        assert torch.allclose(v, want[k], atol=1e-7)
        assert not torch.equal(v, start[k])


def test_logged_loss_is_the_mean_of_the_steps_micro_batches(digits, tmp_path):
    micro: list[float] = []

    class Keep(Callback):
        def on_batch_end(self, trainer: Trainer, out: Any) -> None:
            micro.append(float(out.loss.detach()))

    distiller = Distiller(_mlp(digits), None, {"ce": 1.0})
    run = RunDir(tmp_path / "run")
    train, evals = _loaders(digits)
    Trainer(distiller, _cfg(max_steps=4, grad_accum=2, log_every=1), run_dir=run, seed=0, callbacks=[Keep()]).fit(
        train, evals
    )
    logged = [r["loss"] for r in run.read_metrics() if r["split"] == "train"]
    assert len(micro) == 8 and len(logged) == 4
    for i, value in enumerate(logged):
        assert value == pytest.approx((micro[2 * i] + micro[2 * i + 1]) / 2, rel=1e-6)


def test_selection_by_a_named_metric_and_a_clear_error_when_it_is_absent(digits, tmp_path):
    train, evals = _loaders(digits)
    cfg = _cfg(epochs=2, select={"mode": "best", "metric": "nll", "direction": "min"})
    result = Trainer(Distiller(_mlp(digits), None, {"ce": 1.0}), cfg, seed=0).fit(train, evals)
    assert result.best["val"]["nll"] == min(r["val"]["nll"] for r in result.history)
    bad = _cfg(epochs=1, select={"mode": "best", "metric": "f7"})
    with pytest.raises(ConfigError, match=r"train.select.metric='f7' is not reported on split 'val'; available: .*acc"):
        Trainer(Distiller(_mlp(digits), None, {"ce": 1.0}), bad, seed=0).fit(train, evals)
    assert validate({"student": {"name": "mlp"}, "train": {"select": "best"}}).train.select.mode == "best"


def test_live_teacher_passes_the_attention_mask_to_its_model():
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 4)
            self.head = nn.Linear(4, 3)
            self.masks: list[torch.Tensor] = []

        def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            self.masks.append(attention_mask)
            w = attention_mask.unsqueeze(-1).float()
            return self.head((self.emb(ids) * w).sum(1) / w.sum(1))

    model = Masked()
    ids = torch.tensor([[0, 5, 7], [3, 0, 0]])  # id 0 is a real token in the first row
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    out = Live(model).signals({"input": ids, "attention_mask": mask}, Needs(teacher_logits=True))
    assert torch.equal(model.masks[-1], mask) and out.logits.logits.shape == (2, 3)
    assert adapter_for(model)({"input": ids, "attention_mask": mask}).logits.shape == (2, 3)


def test_a_new_teacher_kind_is_one_class_and_one_decorator(digits):
    from kdforge.recipe import TeacherConfig
    from kdforge.strategies.provision import provide_teacher

    class ZeroConfig(TeacherConfig):
        model_config = ConfigDict(extra="forbid")
        scale: float = 1.0

    @TEACHERS.register("zeros_for_test")
    class Zeros(Teacher):
        Config = ZeroConfig

        @classmethod
        def from_recipe(cls, cfg, build):
            return cls(), {"kind": "zeros_for_test", "scale": cfg.scale}

        def signals(self, batch, needs):
            return kdforge.TeacherOutput(logits=kdforge.DenseSignal(torch.zeros(len(batch["input"]), 10)))

    recipe = validate({"student": {"name": "mlp"}, "data": {"name": "digits"}, "teacher": {"kind": "zeros_for_test"}})
    teacher, info = provide_teacher(recipe, digits)
    assert isinstance(teacher, Zeros) and info == {"kind": "zeros_for_test", "scale": 1.0}
    with pytest.raises(ConfigError, match=r"teacher.scale_typo: unknown key; allowed keys: kind, scale"):
        validate({"student": {"name": "mlp"}, "teacher": {"kind": "zeros_for_test", "scale_typo": 1}})
    with pytest.raises(ConfigError, match=r"teacher.kind: unknown teacher 'zeros_for_tset'"):
        validate({"student": {"name": "mlp"}, "teacher": {"kind": "zeros_for_tset"}})


def test_labels_out_of_range_are_caught_in_any_batch_not_just_the_first(digits):
    distiller = Distiller(_mlp(digits), None, {"ce": 1.0})
    x = torch.randn(4, 1, 8, 8)
    distiller({"input": x, "label": torch.tensor([0, 1, 2, 3])})
    with pytest.raises(kdforge.errors.ShapeMismatchError, match="label 10 is out of range for a model with 10 outputs"):
        distiller({"input": x, "label": torch.tensor([0, 10, 2, 3])})
    with pytest.raises(kdforge.errors.ShapeMismatchError, match="label -1 is out of range"):
        distiller({"input": x, "label": torch.tensor([0, -1, 2, 3])})
    with pytest.raises(kdforge.errors.ShapeMismatchError, match="empty batch"):
        distiller({"input": x[:0], "label": torch.tensor([], dtype=torch.long)})


def test_negative_weights_are_refused():
    with pytest.raises(ConfigError, match=r"objectives.kd.weight=-0.5: must be >= 0"):
        Distiller(nn.Linear(3, 2), nn.Linear(3, 2), {"kd": {"weight": -0.5}})


def test_hidden_states_and_head_reproduce_the_logits_for_chunked_losses():
    model = build_model("tiny_gpt", 50, (12,), width=16, layers=1, heads=2)
    ids = torch.randint(1, 50, (2, 12))
    batch = {"input": ids, "attention_mask": torch.ones(2, 12)}
    out = adapter_for(model)(batch, Needs(student_hidden=True, student_logits=True))
    assert out.hidden.shape == (2, 12, 16) and out.mask.all()
    assert torch.allclose(out.head(out.hidden), out.logits, atol=1e-6)
    # Chunked token losses ask for hidden states alone: no full logits are returned.
    only = adapter_for(model)(batch, Needs(student_hidden=True))
    assert only.logits is None and only.hidden.shape == (2, 12, 16) and only.mask.all()
    gen = adapter_for(model).generate({"input": ids[:, :4]}, max_new_tokens=3)
    assert gen.shape == (2, 7) and torch.equal(gen[:, :4], ids[:, :4])


def test_sequence_terms_see_real_tokens_once_per_pair(tmp_path):
    teacher = build_model("tiny_gpt", 30, (6,), width=16, layers=1, heads=2)
    student = build_model("tiny_gpt", 30, (6,), width=8, layers=1, heads=1)
    ids = torch.randint(1, 30, (3, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4]).bool()
    labels = torch.where(mask, ids, -100)
    distiller = Distiller(student, teacher, {"jsd": {"beta": 0.5}, "ce": 1.0})
    out = distiller({"input": ids, "attention_mask": mask, "label": labels})
    assert out.outputs["student"].logits is None  # a causal LM's token terms are made from hidden states + head
    with torch.no_grad():
        t = teacher(ids)[mask]
    s = student(ids)[mask]
    want = kdforge.objective("jsd", beta=0.5)(s, t) + kdforge.objective("ce")(s, None, labels[mask])
    assert torch.allclose(out.loss, want, atol=1e-5)
    json.dumps({k: float(v) for k, v in out.terms.items()})


def test_fp16_on_cpu_is_refused_not_silently_fp32():
    from kdforge.engine.trainer import resolve_precision

    if torch.cuda.is_available():
        pytest.skip("a GPU machine runs fp16")
    with pytest.raises(ConfigError, match=r"train\.mixed_precision=fp16 needs a GPU"):
        resolve_precision("fp16")
    assert resolve_precision("bf16") == "bf16" and resolve_precision("auto") == "no"
