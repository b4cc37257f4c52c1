"""Distiller: wrap a student and a teacher once, then one call per batch gives the loss and its terms."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from kdforge.batch import as_batch, extract_logits
from kdforge.capture import Recorder
from kdforge.engine.balancer import Balancer
from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.objectives.base import Objective, objective
from kdforge.signals import DenseSignal, Needs, SparseSignal, StudentOutput, TeacherOutput
from kdforge.teachers.base import Teacher
from kdforge.teachers.live import Live

ObjectiveConfig = float | int | Mapping[str, Any]


@dataclass
class DistillOutput:
    """One batch's result: the total loss, each term before weighting, and the student's logits."""

    loss: Tensor
    terms: dict[str, Tensor]
    weighted: dict[str, Tensor]
    student_logits: Tensor
    teacher: TeacherOutput = field(default_factory=TeacherOutput)


def parse_objectives(config: Mapping[str, ObjectiveConfig]) -> tuple[dict[str, Objective], Balancer]:
    """Turn ``{"ce": 0.1, "kd": {"weight": 0.9, "T": 4}}`` into bound objectives and a Balancer."""
    if not config:
        raise ConfigError("objectives: at least one objective is required, e.g. {'ce': 1.0}")
    terms: dict[str, Objective] = {}
    weights: dict[str, float] = {}
    warmups: dict[str, int] = {}
    for name, spec in config.items():
        if isinstance(spec, bool) or not isinstance(spec, (int, float, Mapping)):
            raise ConfigError(f"objectives.{name}: expected a weight or a mapping, got {spec!r}")
        params = dict(spec) if isinstance(spec, Mapping) else {"weight": spec}
        try:
            weights[name] = float(params.pop("weight", 1.0))
            warmups[name] = int(params.pop("warmup_steps", 0))
        except (TypeError, ValueError):
            raise ConfigError(f"objectives.{name}: weight must be a number and warmup_steps an integer") from None
        kind = params.pop("objective", name)
        try:
            terms[name] = objective(kind, **params)
        except ConfigError as err:
            raise ConfigError(f"objectives.{name}: {err}") from None
    return terms, Balancer(weights, warmups)


class Distiller(nn.Module):
    """Student + teacher + objectives; ``distiller(batch)`` returns a DistillOutput."""

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | nn.Module | None = None,
        objectives: Mapping[str, ObjectiveConfig] | None = None,
    ):
        super().__init__()
        self.student = student
        self.teacher = Live(teacher) if isinstance(teacher, nn.Module) else teacher
        self.objectives, self.balancer = parse_objectives(objectives or {"ce": 1.0})
        self.needs = Needs()
        for obj in self.objectives.values():
            self.needs = self.needs | obj.needs
        if self.needs.teacher_logits and self.teacher is None:
            users = [n for n, o in self.objectives.items() if o.needs.teacher_logits]
            raise ConfigError(f"objectives {users} need a teacher, but none was given")
        self._runner: nn.Module = student
        self._recorder: Recorder | None = None
        self._checked = False
        self._step = 0

    def wrap_student(self, runner: nn.Module) -> None:
        """Run the student through ``runner`` (e.g. a DDP wrapper) while exporting the raw module."""
        self._runner = runner

    def _student_forward(self, x: Tensor) -> StudentOutput:
        if self.needs.student_features and self._recorder is None:
            self._recorder = Recorder(self.student, self.needs.student_features)
        if self._recorder is not None:
            self._recorder.clear()
        logits = extract_logits(self._runner(x))
        feats = dict(self._recorder.tensors) if self._recorder is not None else {}
        return StudentOutput(logits=logits, features=feats)

    def check(self, batch: dict[str, Any], student: StudentOutput, teacher: TeacherOutput) -> None:
        """Fail before the first step when labels are missing or teacher/student outputs cannot be compared."""
        if self.needs.labels:
            if batch.get("label") is None:
                users = [n for n, o in self.objectives.items() if o.needs.labels]
                raise ConfigError(f"objectives {users} need labels, but the batch has none")
            labels, logits = batch["label"], student.logits
            if labels.numel() != logits[..., 0].numel():
                raise ShapeMismatchError(
                    f"labels of shape {tuple(labels.shape)} do not fit student logits of shape {tuple(logits.shape)}: "
                    "expected one label per output position (a classifier's data for a classifier, "
                    "next-token labels for a sequence model)"
                )
            top = int(batch["label"].max())
            if top >= student.logits.shape[-1]:
                raise ShapeMismatchError(
                    f"label {top} is out of range for student logits of shape {tuple(student.logits.shape)}"
                )
        t_shape = None
        if isinstance(teacher.logits, DenseSignal):
            t_shape = tuple(teacher.logits.logits.shape)
        elif isinstance(teacher.logits, SparseSignal):
            t_shape = (*teacher.logits.ids.shape[:-1], teacher.logits.vocab_size)
        if t_shape is not None:
            s_shape = tuple(student.logits.shape)
            if t_shape != s_shape:
                raise ShapeMismatchError(
                    f"teacher logits shape {t_shape} and student logits shape {s_shape} cannot be compared: "
                    "the objectives need the same shape (same number of classes and positions)"
                )

    def forward(
        self,
        batch: Any,
        *,
        step: int | None = None,
        epoch: float | None = None,
        progress: float | None = None,
    ) -> DistillOutput:
        """Teacher signals (only those needed), student forward, every objective, the weighted total."""
        batch = as_batch(batch)
        if step is None:
            step = self._step
            self._step += int(self.training)
        teacher = TeacherOutput()
        if self.teacher is not None and (self.needs.teacher_logits or self.needs.teacher_features):
            teacher = self.teacher.signals(batch, self.needs)
            if teacher.logits is not None:
                # A teacher on another device (a GPU teacher, a CPU student) hands its signal to the student's.
                device = batch["input"].device
                mask = None if teacher.mask is None else teacher.mask.to(device)
                teacher = replace(teacher, logits=teacher.logits.to(device), mask=mask)
        student = self._student_forward(batch["input"])
        if not self._checked:
            self.check(batch, student, teacher)
            self._checked = True
        labels = batch.get("label")
        ctx = {"epoch": epoch, "progress": progress, "step": step}
        terms = {name: obj.compute(student, teacher, labels, ctx) for name, obj in self.objectives.items()}
        total, weighted = self.balancer.combine(terms, step)
        observe = getattr(self.teacher, "observe", None)
        if observe is not None and self.training:
            observe(batch, student.logits)
        return DistillOutput(
            loss=total,
            terms={k: v.detach() for k, v in terms.items()},
            weighted={k: w.detach() if w is not terms[k] else terms[k].detach() for k, w in weighted.items()},
            student_logits=student.logits,
            teacher=teacher,
        )

    def export(self) -> nn.Module:
        """The plain student: no hooks, no teacher, no wrapper attached."""
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None
        return self.student

    @torch.no_grad()
    def parameters_to_train(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates (the student's; connectors will join here)."""
        return [p for p in self.student.parameters() if p.requires_grad]
