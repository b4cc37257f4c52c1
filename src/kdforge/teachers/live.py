"""A live teacher: an nn.Module run under torch.inference_mode through its model adapter, never holding gradients."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdforge.adapters import ModelAdapter, adapter_for
from kdforge.errors import ConfigError
from kdforge.recipe import NetworkTeacherConfig
from kdforge.registry import TEACHERS
from kdforge.signals import DenseSignal, FeatureSignal, HeadSignal, Needs, TeacherOutput
from kdforge.teachers.base import Teacher, TeacherBuild, module_fingerprint
from kdforge.teachers.precision import teacher_device, with_precision


def run_frozen(adapter: ModelAdapter, batch: dict[str, Any], needs: Needs, device: torch.device) -> TeacherOutput:
    """Run a frozen model on ``batch`` (moved to ``device``) and return the logits/features asked for."""
    adapter.record(needs.teacher_features)
    if not needs.teacher:
        return TeacherOutput()
    moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    # A causal LM asked for hidden states sends them with its head: the loss makes logits a chunk at a time.
    by_head = needs.teacher_hidden and needs.teacher_logits and adapter.causal_lm
    with torch.inference_mode():
        out = adapter(moved, Needs(student_hidden=by_head))
    # Inference tensors cannot be saved for backward; a clone outside inference mode makes them plain
    # constants the student's loss may use. The copy is of outputs only, never of the graph.
    logits: DenseSignal | HeadSignal | None = None
    if by_head and out.hidden is not None:
        head = out.head
        bias = None if head.bias is None else head.bias.detach()
        logits = HeadSignal(out.hidden.clone(), head.weight.detach(), bias, adapter.softcap)
    elif needs.teacher_logits:
        assert out.logits is not None
        logits = DenseSignal(out.logits.float().clone())
    feats = FeatureSignal({k: v.clone() for k, v in out.features.items()}) if out.features else None
    mask = None if out.mask is None else out.mask.clone()
    return TeacherOutput(logits=logits, features=feats, mask=mask)


def frozen(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every parameter excluded from autograd."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@TEACHERS.register("live")
class Live(Teacher):
    """Wrap a frozen model; ``signals`` runs it without building an autograd graph, passing the attention mask."""

    Config = NetworkTeacherConfig

    def __init__(
        self,
        model: nn.Module,
        dtype: torch.dtype | None = None,
        adapter: str | None = None,
        home: torch.device | None = None,
    ):
        self.network = frozen(model)
        self.dtype = dtype
        self.home = home  # a fixed device of its own: the trainer's moves leave it there
        self.adapter = adapter_for(self.network, adapter)
        self.fingerprint = module_fingerprint(model)
        if home is not None:
            self.network.to(home)

    @classmethod
    def from_recipe(cls, cfg: NetworkTeacherConfig, build: TeacherBuild) -> tuple[Teacher | None, dict[str, Any]]:
        """The recipe's teacher network (checkpoint or trained once and cached), run live."""
        # Checked before the weights load: a wrong device is known without them.
        home = teacher_device(cfg.device)
        if cfg.dtype == "int8" and home is not None and home.type != "cpu":
            raise ConfigError(f"teacher.dtype int8 runs on CPU only, but teacher.device is {cfg.device!r}")
        model, info = build.network()
        if model is None:
            return None, info
        model, dtype = with_precision(model, cfg.dtype)
        return cls(model, dtype=dtype, home=home), {"kind": "live", **info}

    @property
    def model(self) -> nn.Module:
        """The frozen network (also what evaluation runs)."""
        return self.network

    def to(self, device: torch.device | str) -> Live:
        """Move the teacher's weights to ``device`` (unless it has a device of its own: its signals are moved)."""
        if self.home is None:
            self.network.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the teacher's weights live."""
        if self.home is not None:
            return self.home
        first = next(self.network.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def signals(self, batch: dict[str, Any], needs: Needs) -> TeacherOutput:
        """Run the teacher on the batch (inputs and attention mask) and return the logits/features asked for."""
        if self.dtype is not None and torch.is_tensor(batch["input"]) and batch["input"].is_floating_point():
            batch = {**batch, "input": batch["input"].to(self.dtype)}
        return run_frozen(self.adapter, batch, needs, self.device)

    def close(self) -> None:
        """Remove any hooks this teacher added to its model."""
        self.adapter.release()
