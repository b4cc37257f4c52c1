"""Deep mutual learning (Zhang et al. 2018): N students train together, each also matching the others' outputs.

One stage, one loop: the students are the Distiller's named modules, every ordered pair (i, j) adds the ``mimic``
term ``i <- j`` (j's current outputs, detached) weighted 1/(N−1), and the recipe's own terms apply to every student.
"""

from __future__ import annotations

from typing import Any

from accelerate.utils import set_seed
from pydantic import ConfigDict, Field

from kdforge.data.recipe_data import load_data
from kdforge.engine.rundir import RunDir
from kdforge.recipe import ModelConfig, Recipe, StrategyConfig
from kdforge.strategies.base import settings, strategy
from kdforge.strategies.common import (
    RunOutcome,
    ensemble_accuracy,
    kept_record,
    needs_teacher,
    per_student,
    start,
    train_summary,
)
from kdforge.strategies.provision import build, loaders, provide_teacher, require_classification
from kdforge.strategies.stage import Stage, run_stage


class MutualConfig(StrategyConfig):
    """``strategy: {name: mutual, count: 2}`` or named students of their own architectures."""

    model_config = ConfigDict(extra="forbid")
    count: int = Field(2, ge=2, le=16, description="students trained together (copies of `student`, seeds differ)")
    students: dict[str, ModelConfig] = Field(
        default_factory=dict, description="named students of their own architectures (replaces count/student)"
    )
    mimic: dict[str, Any] = Field(
        default_factory=lambda: {"objective": "kd", "T": 1.0, "alpha": 1.0},
        description="the term each student gets from every peer (DML: KL(p_peer || p_self) at T=1)",
    )
    mimic_weight: float = Field(1.0, ge=0, description="total weight of a student's peer terms (split over peers)")


def peer_terms(names: list[str], mimic: dict[str, Any], weight: float) -> dict[str, Any]:
    """One mimicry term per ordered pair of students, weighted so each student's peers sum to ``weight``."""
    share = weight / (len(names) - 1)
    return {
        f"mimic@{i}<-{j}": {**mimic, "weight": share, "pair": f"{i} <- {j}"} for i in names for j in names if i != j
    }


@strategy("mutual", MutualConfig)
def mutual(recipe: Recipe, run_dir: RunDir, resume: bool = False) -> RunOutcome:
    """Train N students at once, each from the labels (recipe terms) and from its peers."""
    cfg = settings(recipe, MutualConfig)
    acc, done = start(recipe, run_dir, resume)
    if done is not None:
        return RunOutcome(done)
    set_seed(recipe.seed)
    bundle = load_data(recipe)
    require_classification(bundle, "strategy mutual")
    run_dir.write_json("labels.json", {"labels": bundle.class_names})
    taught = any(needs_teacher(spec, name) for name, spec in recipe.objectives.items())
    teacher, teacher_info = provide_teacher(recipe, bundle, signals_needed=taught)
    models = cfg.students or {f"s{i}": recipe.student for i in range(cfg.count)}
    students = {}
    for i, (name, model_cfg) in enumerate(models.items()):
        # Student i starts from seed + i: copies of one architecture must not start identical (they would stay so).
        set_seed(recipe.seed + i)
        students[name] = build(model_cfg, bundle, f"strategy.students.{name}")
    names = list(students)
    objectives = {
        **per_student(recipe.objectives, names, "teacher" if teacher is not None else None),
        **peer_terms(names, cfg.mimic, cfg.mimic_weight),
    }
    train_loader, evals = loaders(recipe, bundle, teacher)
    stage = Stage(
        students=students,
        teachers={"teacher": teacher} if teacher is not None else {},
        objectives=objectives,
        train=recipe.train,
        train_loader=train_loader,
        eval_loaders=evals,
        run_dir=run_dir,
        seed=recipe.seed,
    )
    done_stage = run_stage(stage, resume=resume)
    summary = train_summary(recipe, done_stage.train, teacher_info)
    kept = kept_record(recipe, done_stage.train)
    summary["students"] = {
        name: {"model": models[name].model_dump(), "seed": recipe.seed + i, "test": kept.get(_split("test", i, name))}
        for i, name in enumerate(names)
    }
    summary["stages"] = [{"name": n, "test": s["test"]} for n, s in summary["students"].items()]
    summary["ensemble_test_accuracy"] = ensemble_accuracy(list(done_stage.students.values()), evals["test"], acc.device)
    run_dir.write_json("summary.json", summary)
    acc.wait_for_everyone()
    return RunOutcome(summary, student=done_stage.student, teacher=teacher, bundle=bundle)


def _split(split: str, index: int, name: str) -> str:
    """The Trainer's key for a student's metrics: the first under the split's name, the others as split@name."""
    return split if index == 0 else f"{split}@{name}"
