"""A live teacher: an nn.Module run under torch.inference_mode, never holding gradients."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdforge.batch import extract_logits
from kdforge.capture import Recorder
from kdforge.registry import TEACHERS
from kdforge.signals import DenseSignal, FeatureSignal, Needs, TeacherOutput
from kdforge.teachers.base import module_fingerprint


@TEACHERS.register("live")
class Live:
    """Wrap a frozen model; ``signals`` runs it without building an autograd graph."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dtype = dtype
        self.fingerprint = module_fingerprint(model)
        self._recorder: Recorder | None = None

    def to(self, device: torch.device | str) -> Live:
        """Move the teacher's weights to ``device``."""
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the teacher's weights live."""
        first = next(self.model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def _ensure_recorder(self, paths: tuple[str, ...]) -> Recorder | None:
        if not paths:
            return None
        if self._recorder is None or self._recorder.paths != paths:
            if self._recorder is not None:
                self._recorder.remove()
            self._recorder = Recorder(self.model, paths)
        return self._recorder

    def signals(self, batch: dict[str, Any], needs: Needs) -> TeacherOutput:
        """Run the teacher on ``batch['input']`` and return the logits/features asked for."""
        recorder = self._ensure_recorder(needs.teacher_features)
        if not needs.teacher_logits and recorder is None:
            return TeacherOutput()
        x = batch["input"].to(self.device, non_blocking=True)
        if self.dtype is not None and x.is_floating_point():
            x = x.to(self.dtype)
        with torch.inference_mode():
            if recorder is not None:
                recorder.clear()
            logits = extract_logits(self.model(x))
            feats = dict(recorder.tensors) if recorder is not None else {}
        # Inference tensors cannot be saved for backward; a clone outside inference mode makes them plain
        # constants the student's loss may use. The copy is of outputs only, never of the graph.
        logits_out = DenseSignal(logits.float().clone()) if needs.teacher_logits else None
        feats_out = FeatureSignal({k: v.clone() for k, v in feats.items()}) if feats else None
        mask = batch.get("attention_mask") if logits.dim() == 3 else None
        mask = None if mask is None else torch.as_tensor(mask).to(logits.device).bool()
        return TeacherOutput(logits=logits_out, features=feats_out, mask=mask)

    def close(self) -> None:
        """Remove any hooks this teacher added to its model."""
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None
