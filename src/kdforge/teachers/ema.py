"""An EMA teacher (mean teacher): an exponential moving average of a student, updated once per optimizer step.

With ``ramp`` the decay at update t (0, 1, 2, ...) is α_t = min(1 − 1/(t + 1), decay), Tarvainen & Valpola's ramp
("use the true average until the exponential average is more correct"): α_0 = 0 makes the first update a copy and
the teacher stays the plain mean of the student's weights while that mean is the better estimate. The reference code
increments its global step before the call, so its first α is 1/2; counting from 0 here drops the initial weights.
"""

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
    ramp: bool = Field(True, description="decay min(1 - 1/(t+1), decay) at update t (Mean Teacher); false: constant")
    student: str | None = Field(None, description="the student averaged (default: the first one)")


@TEACHERS.register("ema")
class Ema(Teacher):
    """θ_teacher ← decay·θ_teacher + (1−decay)·θ_student after every optimizer step; buffers are copied."""

    Config = EmaConfig
    changes = True

    def __init__(self, decay: float = 0.999, student: str | None = None, ramp: bool = True):
        if not 0 < decay < 1:
            raise ConfigError(f"teacher.decay={decay} must be in (0, 1)")
        self.decay, self.student_name, self.ramp = decay, student, ramp
        self.network: nn.Module | None = None
        self.source: nn.Module | None = None
        self.updates = 0
        self.fingerprint = f"ema:{decay}" + (":ramp" if ramp else "")
        self._params: tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]] = ([], [], [], [])
        self._buffers: tuple[list[Slot], list[Slot]] = ([], [])

    @classmethod
    def from_recipe(cls, cfg: EmaConfig, build: TeacherBuild) -> tuple[Teacher | None, dict[str, Any]]:
        """An EMA of the recipe's student; its weights start as the student's."""
        return cls(cfg.decay, cfg.student, cfg.ramp), {"kind": "ema", "decay": cfg.decay, "ramp": cfg.ramp}

    def setup(self, students: Mapping[str, nn.Module]) -> None:
        """Copy the averaged student (frozen); later updates follow it."""
        name = self.student_name or next(iter(students))
        if name not in students:
            raise ConfigError(f"teacher.student={name!r} is not a student of this run; students: {list(students)}")
        self.source = students[name]
        if self.network is None:
            self.network = frozen(copy.deepcopy(self.source))
        self.adapter = adapter_for(self.network)
        self._params = _pairs(dict(self.network.named_parameters()), dict(self.source.named_parameters()))
        self._buffers = _buffer_slots(self.network, self.source)

    @property
    def model(self) -> nn.Module | None:
        """The averaged network."""
        return self.network

    def to(self, device: torch.device | str) -> Ema:
        """Move the averaged weights to ``device``."""
        if self.network is not None:
            self.network.to(device)
        return self

    def current_decay(self) -> float:
        """The decay of the next update: min(1 − 1/(t + 1), decay) at update t with ``ramp``, else ``decay``."""
        return min(1.0 - 1.0 / (self.updates + 1), self.decay) if self.ramp else self.decay

    @torch.no_grad()
    def on_optimizer_step(self, step: int) -> None:
        """One EMA update from the student's current weights (one fused op per list of tensors)."""
        if self.network is None or self.source is None:
            raise ConfigError("EMA teacher used before setup(): give it to a Distiller with its student")
        alpha = self.current_decay()
        ema_f, live_f, ema_o, live_o = self._params
        floating, other = self._buffers
        # Buffers are read through their modules each time: Module.to() replaces buffer tensors (not parameters).
        ema = ema_f + [e._buffers[n] for e, _, n in floating]  # type: ignore[misc]
        live = _on(ema, live_f + [s._buffers[n] for _, s, n in floating])  # type: ignore[misc]
        if ema:
            torch._foreach_mul_(ema, alpha)
            torch._foreach_add_(ema, live, alpha=1.0 - alpha)
        for value, source in zip(ema_o, live_o, strict=True):
            value.copy_(source)
        for e, s, n in other:
            e._buffers[n].copy_(s._buffers[n])  # type: ignore[union-attr]  # counters such as num_batches_tracked
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


def _pairs(
    ema: dict[str, Tensor], live: dict[str, Tensor]
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """(EMA floating, live floating, EMA other, live other) tensors matched by name.

    Parameters are kept as the Parameter objects, never detached views: Module.to() swaps a parameter's data in
    place, so the objects follow the student to its device while a view taken before would not.
    """
    ema_f: list[Tensor] = []
    live_f: list[Tensor] = []
    ema_o: list[Tensor] = []
    live_o: list[Tensor] = []
    for name, value in ema.items():
        source = live[name]
        if value.is_floating_point():
            ema_f.append(value)
            live_f.append(source)
        else:
            ema_o.append(value)
            live_o.append(source)
    return ema_f, live_f, ema_o, live_o


Slot = tuple[nn.Module, nn.Module, str]  # (EMA module, live module, buffer name)


def _buffer_slots(ema: nn.Module, live: nn.Module) -> tuple[list[Slot], list[Slot]]:
    """The persistent buffers (what state_dict holds) of both networks by owning module and name: floating, other."""
    sources = dict(live.named_modules())
    floating: list[Slot] = []
    other: list[Slot] = []
    for prefix, module in ema.named_modules():
        for name, value in module._buffers.items():
            if value is None or name in module._non_persistent_buffers_set:
                continue
            (floating if value.is_floating_point() else other).append((module, sources[prefix], name))
    return floating, other


def _on(ema: list[Tensor], live: list[Tensor]) -> list[Tensor]:
    """The live tensors on their EMA tensors' devices (the student may train elsewhere than the teacher is kept)."""
    if all(e.device == s.device for e, s in zip(ema, live, strict=True)):
        return live
    return [s.to(e.device) for e, s in zip(ema, live, strict=True)]
