"""Feature objectives: compare a student's intermediate tensors (through their connectors) with the teacher's."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from kdforge.errors import ShapeMismatchError
from kdforge.objectives.base import PairContext, register_objective
from kdforge.objectives.layers import connect_each, feature_pairs, layer_needs, layer_pairs, resolve_layers


def connected(pair: PairContext, term: str, params: dict[str, Any]) -> list[tuple[Tensor, Tensor]]:
    """Each (connector(student tensor), teacher tensor) of the term's layer map, checked to have one shape."""
    pairs = feature_pairs(term, params, pair.student.features, pair.teacher.features)
    names = layer_pairs(term, params)
    out = []
    for i, ((s, t), (s_name, t_name)) in enumerate(zip(pairs, names, strict=True)):
        if pair.connector is not None:
            s = pair.connector[i](s)
        if s.shape != t.shape:
            raise ShapeMismatchError(
                f"objectives.{term}: student {s_name!r} {tuple(s.shape)} vs teacher {t_name!r} {tuple(t.shape)} "
                f"after connector {params.get('connector')!r}"
            )
        out.append((s, t))
    return out


@register_objective(
    "hint", teacher=False, needs=layer_needs("hint"), inputs="pair", build=connect_each, resolve=resolve_layers
)
def hint(
    pair: PairContext,
    *,
    layers: Any = None,
    student_layer: str = "",
    teacher_layer: str = "",
    connector: str = "linear",
) -> Tensor:
    """FitNet: mean squared error between connector(student feature) and the teacher's, averaged over the pairs."""
    params = {"layers": layers, "student_layer": student_layer, "teacher_layer": teacher_layer, "connector": connector}
    pairs = connected(pair, "hint", params)
    return sum(F.mse_loss(s.float(), t.float()) for s, t in pairs) / len(pairs)
