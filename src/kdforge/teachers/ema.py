"""An EMA teacher (mean teacher): an exponential moving average of a student, updated once per optimizer step."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import ConfigDict, Field
from torch import Tensor, nn

from kdforge.adapters import adapter_for
from kdforge.errors import ConfigError
from kdforge.recipe import TeacherConfig
from kdforge.registry import TEACHERS
from kdforge.signals import Needs, TeacherOutput
from kdforge.teachers.base import Teacher, TeacherBuild
from kdforge.teachers.live import frozen, run_frozen


class EmaConfig(TeacherConfig):
    """``teacher: {kind: ema, decay: 0.999, student: student}``."""

    model_config = ConfigDict(extra="forbid")
    decay: float = Field(0.999, gt=0, lt=1)
    student: str | None = Field(None, description="the student averaged (default: the first one)")


@TEACHERS.register("ema")
class Ema(Teacher):
    """θ_teacher ← decay·θ_teacher + (1−decay)·θ_student after every optimizer step; buffers are copied."""

    Config = EmaConfig

    def __init__(self, decay: float = 0.999, student: str | None = None):
        if not 0 < decay < 1:
            raise ConfigError(f"teacher.decay={decay} must be in (0, 1)")
        self.decay, self.student_name = decay, student
        self.network: nn.Module | None = None
        self.source: nn.Module | None = None
        self.updates = 0
        self.fingerprint = f"ema:{decay}"

    @classmethod
    def from_recipe(cls, cfg: EmaConfig, build: TeacherBuild) -> tuple[Teacher | None, dict[str, Any]]:
        """An EMA of the recipe's student; its weights start as the student's."""
        return cls(cfg.decay, cfg.student), {"kind": "ema", "decay": cfg.decay}

    def setup(self, students: Mapping[str, nn.Module]) -> None:
        """Copy the averaged student (frozen); later updates follow it."""
        name = self.student_name or next(iter(students))
        if name not in students:
            raise ConfigError(f"teacher.student={name!r} is not a student of this run; students: {list(students)}")
        self.source = students[name]
        if self.network is None:
            self.network = frozen(copy.deepcopy(self.source))
        self.adapter = adapter_for(self.network)

    @property
    def model(self) -> nn.Module | None:
        """The averaged network."""
        return self.network

    def to(self, device: torch.device | str) -> Ema:
        """Move the averaged weights to ``device``."""
        if self.network is not None:
            self.network.to(device)
        return self

    @torch.no_grad()
    def on_optimizer_step(self, step: int) -> None:
        """One EMA update from the student's current weights."""
        if self.network is None or self.source is None:
            raise ConfigError("EMA teacher used before setup(): give it to a Distiller with its student")
        ema, live = self.network.state_dict(), self.source.state_dict()
        for key, value in ema.items():
            if value.is_floating_point():
                value.mul_(self.decay).add_(live[key].detach().to(value.device), alpha=1.0 - self.decay)
            else:
                value.copy_(live[key])  # counters such as BatchNorm's num_batches_tracked
        self.updates += 1

    def signals(self, batch: dict[str, Any], needs: Needs) -> TeacherOutput:
        """The averaged network's logits/features for the batch."""
        if self.network is None:
            raise ConfigError("EMA teacher used before setup(): give it to a Distiller with its student")
        device = next(self.network.parameters()).device
        return run_frozen(self.adapter, batch, needs, device)

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights and the update count."""
        if self.network is None:
            return {}
        state = {f"model.{k}": v for k, v in self.network.state_dict().items()}
        return {**state, "updates": torch.tensor(self.updates)}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore the averaged weights (after ``setup``)."""
        if self.network is None or not state:
            return
        weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        self.network.load_state_dict(weights)
        self.updates = int(state["updates"])
