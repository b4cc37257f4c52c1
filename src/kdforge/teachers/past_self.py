"""The student's own predictions from the previous epoch, per sample: the teacher of PS-KD."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kdforge.registry import TEACHERS
from kdforge.signals import DenseSignal, Needs, TeacherOutput
from kdforge.teachers.base import sample_ids

# Logit gap that makes an unseen sample's target a near one-hot of its label: no self-knowledge yet.
_UNSEEN_MARGIN = 30.0


@TEACHERS.register("past_self")
class PastSelf:
    """A per-sample buffer of the student's last logits, read before it is overwritten."""

    def __init__(self, num_samples: int, num_classes: int):
        self.logits = torch.zeros(num_samples, num_classes)
        self.seen = torch.zeros(num_samples, dtype=torch.bool)
        self.fingerprint = f"past_self:{num_samples}x{num_classes}"

    def signals(self, batch: dict[str, Any], needs: Needs) -> TeacherOutput:
        """Return last epoch's logits of the batch's samples (label one-hot where none yet)."""
        if not needs.teacher_logits:
            return TeacherOutput()
        idx = sample_ids(batch)
        out = self.logits[idx].clone()
        unseen = ~self.seen[idx]
        if unseen.any() and "label" in batch:
            labels = batch["label"].cpu().long()[unseen]
            fresh = torch.zeros(int(unseen.sum()), out.shape[1])
            fresh[torch.arange(len(labels)), labels] = _UNSEEN_MARGIN
            out[unseen] = fresh
        return TeacherOutput(logits=DenseSignal(out.to(batch["input"].device)))

    def observe(self, batch: dict[str, Any], student_logits: Tensor) -> None:
        """Remember the student's logits for these samples, for the next epoch."""
        idx = sample_ids(batch)
        self.logits[idx] = student_logits.detach().float().cpu()
        self.seen[idx] = True
