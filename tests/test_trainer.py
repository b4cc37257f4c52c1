"""The Trainer on real (digits) data: learning, logging, checkpoints, accumulation, schedules, NaN stops."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from kdforge.data import load_dataset, make_loader
from kdforge.engine.checkpoint import read_state
from kdforge.engine.distiller import Distiller
from kdforge.engine.optim import lr_factor
from kdforge.engine.rundir import RunDir
from kdforge.engine.trainer import Trainer
from kdforge.errors import NonFiniteLossError
from kdforge.models import build_model
from kdforge.objectives import register_objective
from kdforge.recipe import ScheduleConfig, TrainConfig


@register_objective("test_nan_from_step_6", teacher=False, labels=True)
def _nan_after(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor, *, step: int = 0) -> Tensor:
    """CE that turns into NaN from step 6 on (a deterministic fault for the test)."""
    ce = torch.nn.functional.cross_entropy(student_logits, labels)
    return ce * float("nan") if step >= 6 else ce


def _setup(objectives, **train):
    bundle = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    student = build_model("mlp", 10, bundle.input_shape, hidden=(32,))
    cfg = TrainConfig(optimizer={"name": "adamw", "lr": 0.01}, **train)
    train_loader = make_loader(bundle.train, 64, shuffle=True, seed=0)
    evals = {"val": make_loader(bundle.val, 256, shuffle=False, seed=0)}
    return Distiller(student, None, objectives), cfg, train_loader, evals


def test_fit_learns_logs_and_checkpoints(tmp_path):
    distiller, cfg, train, evals = _setup({"ce": 1.0}, epochs=4, log_every=5)
    run = RunDir(tmp_path / "run")
    result = Trainer(distiller, cfg, run_dir=run, seed=0).fit(train, evals)
    assert result.steps == 4 * len(train)
    assert result.last["val"]["accuracy"] > 0.85
    records = run.read_metrics()
    assert {r["split"] for r in records} == {"train", "val"}
    assert sum(r["split"] == "val" for r in records) == 4
    train_rec = [r for r in records if r["split"] == "train"]
    assert {"loss", "lr", "term/ce", "weighted/ce"} <= set(train_rec[0])
    assert read_state(run.checkpoints / "last")["step"] == result.steps
    assert read_state(run.checkpoints / "best")["metrics"]["val"]["accuracy"] == pytest.approx(
        result.best["val"]["accuracy"]
    )


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    distiller, cfg, train, evals = _setup({"ce": 1.0}, epochs=1, grad_accum=4)
    result = Trainer(distiller, cfg, seed=0).fit(train, evals)
    assert result.steps == math.ceil(len(train) / 4)


def test_nan_stops_naming_step_and_term_and_keeps_last_good_checkpoint(tmp_path):
    distiller, cfg, train, evals = _setup({"ce": 0.5, "bad": {"objective": "test_nan_from_step_6"}}, eval_every=2)
    run = RunDir(tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match=r"step 6: term 'bad'") as err:
        Trainer(distiller, cfg, run_dir=run, seed=0).fit(train, evals)
    assert err.value.step == 6 and err.value.term == "bad"
    state = read_state(run.checkpoints / "last")  # verifies every file's sha256
    assert state["step"] == 6 - 6 % 2


def test_schedules():
    cosine = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 110, 10, cosine) == pytest.approx(0.1)
    assert lr_factor(9, 110, 10, cosine) == pytest.approx(1.0)
    assert lr_factor(10, 110, 10, cosine) == pytest.approx(1.0)
    assert lr_factor(60, 110, 10, cosine) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, 110, 10, cosine) == pytest.approx(0.1)
    step = ScheduleConfig(name="step", milestones=[2, 4], gamma=0.1)
    assert [lr_factor(s, 60, 10, step) for s in (0, 19, 20, 40)] == pytest.approx([1, 1, 0.1, 0.01])
    assert lr_factor(5, 10, 10, ScheduleConfig(name="constant")) == 1.0
