"""Steps every strategy repeats: start (or skip) a run folder, turn recipe terms into per-student terms, summarise."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from kdforge import progress
from kdforge.engine.rundir import RunDir
from kdforge.engine.terms import parse_objectives
from kdforge.engine.trainer import TrainResult, get_accelerator
from kdforge.errors import ConfigError
from kdforge.recipe import Recipe, dump

SUMMARY = "summary.json"


@dataclass
class RunOutcome:
    """A strategy's result: the public summary (written to summary.json) and the objects the report needs."""

    summary: dict[str, Any]
    student: nn.Module | None = None
    teacher: Any = None
    bundle: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def finished(run_dir: RunDir) -> dict[str, Any] | None:
    """The summary of a run folder whose strategy already finished (None when it has not)."""
    path = run_dir.path / SUMMARY
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def start(recipe: Recipe, run_dir: RunDir, resume: bool) -> tuple[Accelerator, dict[str, Any] | None]:
    """The accelerator and, when resuming a folder whose strategy finished, its summary (never retrained)."""
    acc = get_accelerator(recipe.train.mixed_precision, recipe.train.grad_accum)
    run_dir.main = run_dir.main and acc.is_main_process
    if resume and (done := finished(run_dir)) is not None:
        return acc, done
    if not resume:
        run_dir.write_recipe(dump(recipe))
    return acc, None


def needs_teacher(spec: float | Mapping[str, Any], name: str) -> bool:
    """Whether a recipe term (``name: spec``) compares its student with a teaching side."""
    terms, _ = parse_objectives({name: spec})
    return terms[name].objective.needs.teacher


def require_teacher_term(recipe: Recipe, what: str) -> None:
    """Refuse a recipe whose terms never compare a student with a teacher, where ``what`` (a sentence) needs one."""
    if not any(needs_teacher(spec, name) for name, spec in recipe.objectives.items()):
        raise ConfigError(
            f"objectives: {what}, but {sorted(recipe.objectives)} has no teacher term; add one, e.g. "
            "{kd: {T: 4, alpha: 0.9}}"
        )


def per_student(
    objectives: Mapping[str, float | Mapping[str, Any]], students: Sequence[str], teacher: str | None
) -> dict[str, Any]:
    """Every recipe term once per student: label terms on the student, teacher terms ``student <- teacher``."""
    out: dict[str, Any] = {}
    for name, spec in objectives.items():
        params = dict(spec) if isinstance(spec, Mapping) else {"weight": spec}
        if "pair" in params:
            raise ConfigError(f"objectives.{name}.pair: this strategy names the pairs itself; remove 'pair'")
        params.setdefault("objective", name)
        taught = needs_teacher(spec, name)
        if taught and teacher is None:
            raise ConfigError(f"objectives.{name}: needs a teacher, but this recipe has none (teacher: ...)")
        for student in students:
            out[f"{name}@{student}"] = {**params, "pair": f"{student} <- {teacher}" if taught else student}
    return out


def train_summary(recipe: Recipe, result: TrainResult, teacher_info: dict[str, Any]) -> dict[str, Any]:
    """The summary keys every run has: budget, history, best/last records, the kept test metrics."""
    return {
        "name": recipe.name,
        "strategy": recipe.strategy.model_dump(mode="json"),
        "objectives": recipe.objectives,
        "student": recipe.student.model_dump(),
        "world_size": result.world_size,
        "steps": result.steps,
        "epochs": result.epochs,
        "train_wall_s": round(result.wall_s, 3),
        "resumed_from_step": result.resumed_from,
        "best": result.best,
        "last": result.last,
        "history": result.history,
        "test": kept_record(recipe, result).get("test"),
        "teacher": teacher_info,
    }


def kept_record(recipe: Recipe, result: TrainResult) -> dict[str, Any]:
    """The evaluation record the run keeps (best by the selection metric, or the last)."""
    return (result.best if recipe.train.select.mode == "best" and result.best else result.last) or {}


@torch.no_grad()
def ensemble_accuracy(models: list[torch.nn.Module], loader: Any, device: torch.device) -> float:
    """Test accuracy of the models' mean probabilities."""
    from kdforge.evaluate.predict import predict

    total, labels = None, None
    with progress.status(f"evaluating the ensemble of {len(models)} students on the test set"):
        for model in models:
            logits, labels, _ = predict(model, loader, device)
            probs = logits.float().softmax(-1)
            total = probs if total is None else total + probs
    assert total is not None and labels is not None
    return float((total.argmax(-1) == labels).float().mean())
