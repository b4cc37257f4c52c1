"""The student's own predictions from the previous epoch, per sample: the teacher of PS-KD."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import ConfigDict
from torch import Tensor

from kdforge.errors import ConfigError
from kdforge.recipe import TeacherConfig
from kdforge.registry import TEACHERS
from kdforge.signals import DenseSignal, Needs, StudentOutput, TeacherOutput
from kdforge.teachers.base import Teacher, TeacherBuild, sample_ids

# Logit gap that makes an unseen sample's target a near one-hot of its label: no self-knowledge yet.
_UNSEEN_MARGIN = 30.0


class PastSelfConfig(TeacherConfig):
    """``teacher: {kind: past_self}``: no settings; PS-KD's α schedule is the objective's."""

    model_config = ConfigDict(extra="forbid")


@TEACHERS.register("past_self")
class PastSelf(Teacher):
    """A per-sample buffer of the student's last logits, read before it is overwritten."""

    Config = PastSelfConfig

    def __init__(self, num_samples: int, num_classes: int):
        self.logits = torch.zeros(num_samples, num_classes)
        self.seen = torch.zeros(num_samples, dtype=torch.bool)
        self.fingerprint = f"past_self:{num_samples}x{num_classes}"

    @classmethod
    def from_recipe(cls, cfg: PastSelfConfig, build: TeacherBuild) -> tuple[Teacher | None, dict[str, Any]]:
        """A buffer sized for the training split (one process only: the buffer is per process)."""
        if build.num_processes > 1:
            raise ConfigError("teacher.kind=past_self keeps per-process predictions; run it in one process")
        size = int(build.bundle.train.indices.max()) + 1
        return cls(size, build.bundle.num_classes), {"kind": "past_self"}

    def state_dict(self) -> dict[str, Tensor]:
        """The past predictions and which samples have one (restored on resume)."""
        return {"logits": self.logits, "seen": self.seen}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore the buffer written by ``state_dict``."""
        self.logits.copy_(state["logits"])
        self.seen.copy_(state["seen"])

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

    def observe(self, batch: dict[str, Any], student: StudentOutput) -> None:
        """Remember the student's logits for these samples, for the next epoch."""
        idx = sample_ids(batch)
        self.logits[idx] = student.logits.detach().float().cpu()
        self.seen[idx] = True
