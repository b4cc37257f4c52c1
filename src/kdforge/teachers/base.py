"""The Teacher base class: anything that turns a batch into signals, identified by a fingerprint.

A teacher kind is one file: a subclass with its recipe section (``Config``), a ``from_recipe`` builder and the
``@TEACHERS.register(kind)`` decorator. Every hook has a do-nothing default, so a kind overrides only what it uses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from kdforge.errors import ConfigError
from kdforge.recipe import TeacherConfig
from kdforge.signals import Needs, StudentOutput, TeacherOutput


class TeacherBuild(Protocol):
    """What a teacher kind may ask of the strategy building it (implemented above this layer)."""

    recipe: Any
    bundle: Any
    signals_needed: bool

    def network(self, allow_training: bool = True) -> tuple[nn.Module | None, dict[str, Any]]:
        """The recipe's teacher network: from its checkpoint, or trained once and cached."""
        ...


class Teacher:
    """A source of knowledge about inputs: live, cached, precomputed, past_self, ema — one registered class each."""

    Config: ClassVar[type[TeacherConfig]] = TeacherConfig
    fingerprint: str = ""
    streams: bool = False  # True when signals are read from disk shard by shard (the Trainer then prefetches)
    changes: bool = False  # True when training updates the teacher (EMA): evaluation then re-runs it every time

    @classmethod
    def from_recipe(cls, cfg: TeacherConfig, build: TeacherBuild) -> tuple[Teacher | None, dict[str, Any]]:
        """Build this kind from its recipe section; returns the teacher and a description for the run summary."""
        raise ConfigError(f"teacher.kind={cfg.kind!r} cannot be built from a recipe")

    def setup(self, students: Mapping[str, nn.Module]) -> None:
        """Called once by the Distiller with the named students (an EMA teacher copies its student here)."""

    def signals(self, batch: dict[str, Any], needs: Needs) -> TeacherOutput:
        """Return only what ``needs`` asks for, for this batch."""
        raise NotImplementedError

    def prefetch(self, batch: dict[str, Any]) -> None:
        """Start fetching what ``batch`` will need while the current step runs."""

    def observe(self, batch: dict[str, Any], student: StudentOutput) -> None:
        """See the taught student's output on a training batch (PS-KD keeps it as next epoch's target)."""

    def on_optimizer_step(self, step: int) -> None:
        """Called after every optimizer step (not every micro-batch): EMA updates live here."""

    def to(self, device: torch.device | str) -> Teacher:
        """Move whatever the teacher computes with to ``device``."""
        return self

    @property
    def model(self) -> nn.Module | None:
        """The network to run on evaluation data (agreement, KL), when there is one."""
        return None

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors that must survive a resume (PS-KD's past predictions, EMA weights); empty when stateless."""
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore what ``state_dict`` returned."""

    def close(self) -> None:
        """Release hooks, threads or files."""


def module_fingerprint(model: nn.Module, extra: str = "") -> str:
    """sha256 over the class name, parameter/buffer names, shapes, dtypes and values."""
    h = hashlib.sha256(type(model).__name__.encode())
    h.update(extra.encode())
    for name, value in model.state_dict().items():
        _hash_value(h, name, value)
    return h.hexdigest()[:16]


def _hash_value(h: Any, name: str, value: Any) -> None:
    """Feed one state_dict entry to ``h``: a tensor's bytes, or a quantized layer's packed (weight, bias) and dtype."""
    if isinstance(value, (tuple, list)):
        for i, part in enumerate(value):
            _hash_value(h, f"{name}.{i}", part)
        return
    if not isinstance(value, Tensor):
        h.update(f"{name}={value!r}".encode())
        return
    t: Tensor = value.detach().to("cpu")
    if t.is_quantized:
        t = t.int_repr()
    t = t.contiguous()
    h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def evaluation_model(teacher: object) -> nn.Module | None:
    """The network behind a teacher, when there is one to run on evaluation data."""
    if teacher is None:
        return None
    model = getattr(teacher, "model", None)
    return model if isinstance(model, nn.Module) else None


def sample_ids(batch: dict[str, Any]) -> Tensor:
    """The batch's sample ids; teachers that look signals up by id cannot work without them."""
    if "index" not in batch:
        raise ConfigError(
            "this teacher looks signals up by sample id, but the batch has no 'index'; "
            "use kdforge data sets or pass batches as dicts with an 'index' tensor"
        )
    return torch.as_tensor(batch["index"]).cpu().long()
