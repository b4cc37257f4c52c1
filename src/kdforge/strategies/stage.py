"""A training stage: data, modules, objectives and the loop, returning a typed result. Strategies compose stages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from kdforge import progress
from kdforge.engine.callbacks import Callback
from kdforge.engine.distiller import Distiller
from kdforge.engine.rundir import RunDir
from kdforge.engine.terms import ObjectiveConfig
from kdforge.engine.tracking import tracking_callbacks
from kdforge.engine.trainer import Trainer, TrainResult
from kdforge.recipe import TrainConfig
from kdforge.teachers.base import Teacher


@dataclass
class Stage:
    """Everything one training stage needs; ``run_stage`` trains it with the one Trainer."""

    students: Mapping[str, nn.Module]
    objectives: Mapping[str, ObjectiveConfig]
    train: TrainConfig
    train_loader: Any
    eval_loaders: Mapping[str, Any] = field(default_factory=dict)
    teachers: Mapping[str, Teacher] = field(default_factory=dict)
    connectors: Mapping[str, nn.Module] = field(default_factory=dict)
    callbacks: Sequence[Callback] = ()
    run_dir: RunDir | None = None
    seed: int = 0
    compare_vocab: int | None = None  # rows a padded LM head shares with the other one (vocabulary check at set-up)
    batch_source: Any = None  # turns each training batch into the one trained on (generated responses, mixup)
    views: Sequence[str] = ()  # other views of each batch (``input@v``) the students also run on (``student@v``)


@dataclass
class StageResult:
    """What a stage hands to the next one: the trained students (plain modules), its history and records."""

    students: dict[str, nn.Module]
    train: TrainResult
    distiller: Distiller

    @property
    def student(self) -> nn.Module:
        """The first trained student."""
        return next(iter(self.students.values()))


def run_stage(stage: Stage, resume: bool = False) -> StageResult:
    """Train the stage's students against its teachers; ``resume`` continues the run folder's last checkpoint."""
    distiller = Distiller(
        dict(stage.students),
        dict(stage.teachers),
        stage.objectives,
        connectors=stage.connectors,
        chunk_size=stage.train.chunk_size,
        compare_vocab=stage.compare_vocab,
        views=stage.views,
    )
    resolved = {n: t.objective.params for n, t in distiller.terms.items() if t.objective.spec.resolve is not None}
    if resolved and stage.run_dir is not None:
        # What an automatic map (uniform, embedding, ...) chose, in the order of the connectors in the checkpoint.
        stage.run_dir.write_json("objectives.json", {"resolved": resolved})
    trainer = Trainer(
        distiller,
        stage.train,
        run_dir=stage.run_dir,
        seed=stage.seed,
        callbacks=[*stage.callbacks, *tracking_callbacks(stage.run_dir)],  # the run folder's recipe.yaml: track
        resume=resume,
        batch_source=stage.batch_source,
    )
    name = stage.run_dir.path.name if stage.run_dir is not None else "student"
    # Before its bar the Trainer runs the teacher over the evaluation splits once (agreement, KL): say so.
    setup = f" (first the teacher on {', '.join(stage.eval_loaders)})" if stage.teachers and stage.eval_loaders else ""
    with progress.status(f"training {name}{setup}"):
        result = trainer.fit(stage.train_loader, dict(stage.eval_loaders))
    students = {name: distiller.export(name) for name in distiller.students}
    return StageResult(students=students, train=result, distiller=distiller)
