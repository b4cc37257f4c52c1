"""Feature objectives: compare a student's intermediate tensor (through its connector) with the teacher's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from kdforge.errors import ConfigError
from kdforge.objectives.base import PairContext, register_objective
from kdforge.signals import Needs


def _layers(params: Mapping[str, Any]) -> Needs:
    if not params["student_layer"] or not params["teacher_layer"]:
        raise ConfigError("objective 'hint' needs student_layer and teacher_layer (module paths, e.g. 'layer3')")
    return Needs(student_features=(params["student_layer"],), teacher_features=(params["teacher_layer"],))


@register_objective("hint", teacher=False, needs=_layers, inputs="pair")
def hint(pair: PairContext, *, student_layer: str = "", teacher_layer: str = "", connector: str = "linear") -> Tensor:
    """FitNet: mean squared error between connector(student feature) and the teacher's feature."""
    s = pair.student.features[student_layer]
    if pair.teacher.features is None:
        raise ConfigError(f"objective 'hint': the teaching side returned no feature {teacher_layer!r}")
    t = pair.teacher.features[teacher_layer]
    if pair.connector is not None:
        s = pair.connector(s)
    if s.shape != t.shape:
        raise ConfigError(
            f"objective 'hint': student {student_layer!r} {tuple(s.shape)} vs teacher {teacher_layer!r} "
            f"{tuple(t.shape)} after connector {connector!r}"
        )
    return F.mse_loss(s.float(), t.float())
