"""The offline strategy: a frozen teacher (or none) teaches one student on the recipe's budget."""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import set_seed

from kdforge.engine.distiller import Distiller, parse_objectives
from kdforge.engine.rundir import RunDir
from kdforge.engine.trainer import Trainer, get_accelerator
from kdforge.evaluate import classification_metrics, model_profile, predict
from kdforge.recipe import Recipe, dump
from kdforge.registry import STRATEGIES
from kdforge.strategies.provision import build, load_data, loaders, provide_teacher, require_classification
from kdforge.teachers import evaluation_model


def test_metrics(model: torch.nn.Module, loader: Any, teacher: Any = None) -> dict[str, float]:
    """Test-set metrics of ``model`` (agreement and KL against a live teacher when there is one)."""
    device = next(model.parameters()).device
    logits, labels, _ = predict(model, loader, device)
    t_logits = None
    t_model = evaluation_model(teacher)
    if t_model is not None:
        t_logits, _, _ = predict(t_model, loader, next(t_model.parameters()).device)
    return classification_metrics(logits, labels, t_logits)


@STRATEGIES.register("offline")
def offline(recipe: Recipe, run_dir: RunDir) -> dict[str, Any]:
    """Train the student against a frozen teacher; evaluate and profile it; write the run folder."""
    acc = get_accelerator(recipe.train.mixed_precision, recipe.train.grad_accum)
    run_dir.main = run_dir.main and acc.is_main_process
    run_dir.write_text("recipe.yaml", dump(recipe))
    set_seed(recipe.seed)
    bundle = load_data(recipe)
    require_classification(bundle, "`kdforge run`")
    terms, _ = parse_objectives(recipe.objectives)
    needed = any(o.needs.teacher_logits for o in terms.values())
    teacher, teacher_info = provide_teacher(recipe, bundle, signals_needed=needed)
    set_seed(recipe.seed)  # the student's initial weights depend on the seed alone, not on what ran before
    student = build(recipe.student, bundle, "student")
    distiller = Distiller(student, teacher, recipe.objectives)
    train_loader, evals = loaders(recipe, bundle, teacher)
    trainer = Trainer(distiller, recipe.train, run_dir=run_dir, seed=recipe.seed)
    result = trainer.fit(train_loader, evals, select_on="val")
    student = distiller.export()
    summary: dict[str, Any] = {
        "name": recipe.name,
        "objectives": recipe.objectives,
        "student": recipe.student.model_dump(),
        "world_size": result.world_size,
        "steps": result.steps,
        "epochs": result.epochs,
        "train_wall_s": round(result.wall_s, 3),
        "best": result.best,
        "last": result.last,
        "history": result.history,
        "test": _selected(result, recipe.train.select).get("test"),
        "teacher": teacher_info,
    }
    if acc.is_main_process and recipe.profile:
        summary["profile"] = model_profile(student.to("cpu"), bundle.input_shape)
    run_dir.write_json("summary.json", summary)
    acc.wait_for_everyone()
    summary["_student"] = student
    summary["_teacher"] = teacher
    summary["_bundle"] = bundle
    return summary


def _selected(result: Any, select: str) -> dict[str, Any]:
    """The evaluation record of the checkpoint the run keeps (best on validation, or last)."""
    record = result.best if select == "best" and result.best else result.last
    return record or {}
