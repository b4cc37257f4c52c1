"""Mean teacher (Tarvainen & Valpola 2017) with FixMatch-style pseudo-labels: semi-supervised learning from a
labelled subset and the unlabeled remainder of the training set.

The teacher is an exponential moving average of the student. Each batch holds ``labelled_batch`` labelled samples
(cycled: a small labelled set is seen many times per epoch) and ``unlabelled_batch`` unlabeled ones, each drawn in a
weak and a strong view. The student learns the recipe's supervised terms on the labelled rows (labels of unlabeled rows
are −100) and, on the strong view, the teacher's confident predictions on the weak view (``pseudo_label``, a fixed
threshold or FreeMatch's per-class one) plus, optionally, Mean Teacher's consistency cost.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from accelerate.utils import set_seed
from pydantic import ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from kdforge import progress
from kdforge.data.base import in_memory, with_augment, with_views
from kdforge.data.recipe_data import load_data
from kdforge.data.semi import labelled_positions, semi_loader
from kdforge.engine.rundir import RunDir
from kdforge.errors import ConfigError
from kdforge.evaluate import test_metrics
from kdforge.recipe import Recipe, StrategyConfig
from kdforge.strategies.base import settings, strategy
from kdforge.strategies.common import SUMMARY, RunOutcome, start, train_summary
from kdforge.strategies.provision import build, loaders, require_classification
from kdforge.strategies.stage import Stage, run_stage
from kdforge.teachers.ema import Ema

# The weak (teacher's) and strong (student's) views by input kind when the recipe says "auto": the plain input for
# the teacher and a light augmentation for the student did best for kdforge's MLP and bag-of-words students in pilot
# runs before the benchmark (single seeds, not in benchmarks/results): heavier `strong` / `token_mask_strong` views
# cost these students more than they gave.
VIEWS = {"image": ("none", "flip_crop"), "tokens": ("none", "token_mask")}


class MeanTeacherConfig(StrategyConfig):
    """``strategy: {name: mean_teacher, labelled_fraction: 0.01}`` and the semi-supervised knobs."""

    model_config = ConfigDict(extra="forbid")
    labelled_fraction: float = Field(0.1, gt=0, description="share of each class kept labelled; the rest unlabeled")
    labelled_batch: int = Field(32, ge=1, description="labelled samples per batch")
    unlabelled_batch: int = Field(224, ge=1, description="unlabeled samples per batch (FixMatch's μ·B)")
    decay: float = Field(0.99, gt=0, lt=1, description="EMA decay of the teacher")
    ramp: bool = Field(True, description="EMA decay min(decay, 1 − 1/(t+1)): the teacher follows early steps closely")
    weak: str = Field("auto", description="the teacher's view: an augmentation name, or auto (by input kind)")
    strong: str = Field("auto", description="the student's unlabeled view: an augmentation name, or auto")
    threshold: float = Field(0.95, gt=0, le=1, description="confidence a pseudo-label needs (fixed threshold)")
    dynamic: Literal["none", "freematch"] = Field("none", description="per-class thresholds (FreeMatch) or none")
    pseudo: float = Field(1.0, ge=0, description="weight of the pseudo-label term")
    consistency: float = Field(0.0, ge=0, description="weight of Mean Teacher's consistency (squared error) term")

    @field_validator("labelled_fraction")
    @classmethod
    def _leaves_unlabelled(cls, value: float) -> float:
        if value >= 1:
            raise PydanticCustomError(
                "no_unlabelled",
                "{value} leaves no unlabeled data: mean_teacher learns from the unlabeled remainder of the training "
                "set; give the labelled share below 1 (e.g. 0.01 or 0.1), or use strategy offline for full labels",
                {"value": value},
            )
        return value


def check(recipe: Recipe) -> None:
    """The teacher is the student's EMA; the labelled subset is declared here, not by ``data.params``."""
    cfg = settings(recipe, MeanTeacherConfig)
    if recipe.teacher is not None:
        raise ConfigError(
            f"teacher.kind={recipe.teacher.kind!r}: in strategy mean_teacher the teacher is the EMA of the student; "
            "remove the teacher section"
        )
    if recipe.data.params.get("label_fraction", 1.0) != 1.0:
        raise ConfigError(
            "data.params.label_fraction: mean_teacher needs the whole training set (the unlabeled remainder is its "
            "data); declare the labelled share as strategy.labelled_fraction instead"
        )
    if cfg.pseudo == 0 and cfg.consistency == 0:
        raise ConfigError(
            "strategy.pseudo and strategy.consistency are both 0: mean_teacher would ignore the unlabeled data; "
            "give one of them a weight"
        )


def unlabelled_terms(cfg: MeanTeacherConfig) -> dict[str, Any]:
    """The terms on the strong view taught by the EMA teacher's weak view."""
    pair = "student@strong <- teacher"
    terms: dict[str, Any] = {}
    if cfg.pseudo:
        terms["pseudo"] = {
            "objective": "pseudo_label",
            "weight": cfg.pseudo,
            "threshold": cfg.threshold,
            "dynamic": cfg.dynamic,
            "pair": pair,
        }
    if cfg.consistency:
        terms["consistency"] = {"objective": "consistency", "weight": cfg.consistency, "pair": pair}
    return terms


@strategy("mean_teacher", MeanTeacherConfig, check)
def mean_teacher(recipe: Recipe, run_dir: RunDir, resume: bool = False) -> RunOutcome:
    """Semi-supervised: an EMA teacher's confident predictions on weak views teach the student's strong views."""
    cfg = settings(recipe, MeanTeacherConfig)
    acc, done = start(recipe, run_dir, resume)
    if done is not None:
        return RunOutcome(done)
    set_seed(recipe.seed)
    bundle = load_data(recipe)
    require_classification(bundle, "strategy mean_teacher")
    run_dir.write_json("labels.json", {"labels": bundle.class_names})
    bundle.train = in_memory(bundle.train)  # files data is read batch by batch; views need the samples at hand
    kind = "tokens" if not bundle.train.inputs.is_floating_point() else "image"
    weak = VIEWS[kind][0] if cfg.weak == "auto" else cfg.weak
    strong = VIEWS[kind][1] if cfg.strong == "auto" else cfg.strong
    train = with_views(with_augment(bundle.train, weak, augment_seed=recipe.seed), {"strong": strong})
    labelled = labelled_positions(bundle.train, cfg.labelled_fraction, int(recipe.data.params.get("seed", 0)))
    train_loader = semi_loader(train, labelled, cfg.labelled_batch, cfg.unlabelled_batch, recipe.seed)
    _, evals = loaders(recipe, bundle)
    set_seed(recipe.seed)
    student = build(recipe.student, bundle, "student")
    teacher = Ema(cfg.decay, ramp=cfg.ramp)
    stage = Stage(
        students={"student": student},
        teachers={"teacher": teacher},
        objectives={**recipe.objectives, **unlabelled_terms(cfg)},
        train=recipe.train,
        train_loader=train_loader,
        eval_loaders=evals,
        run_dir=run_dir,
        seed=recipe.seed,
        views=("strong",),
    )
    result = run_stage(stage, resume=resume)
    info = {"kind": "ema", "decay": cfg.decay, "ramp": cfg.ramp}
    summary = train_summary(recipe, result.train, info)
    summary["semi"] = {
        "labelled": len(labelled),
        "unlabelled": int(len(bundle.train) - len(labelled)),
        "weak": weak,
        "strong": strong,
        "ema_updates": teacher.updates,
    }
    if acc.is_main_process and teacher.model is not None:
        with torch.no_grad(), progress.status("evaluating the mean teacher on the test set"):
            summary["teacher_test"] = test_metrics(teacher.model, evals["test"])
    run_dir.write_json(SUMMARY, summary)
    acc.wait_for_everyone()
    return RunOutcome(summary, student=result.student, teacher=teacher, bundle=bundle)
