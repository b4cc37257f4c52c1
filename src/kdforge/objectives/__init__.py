"""Registered objectives: importing this package fills the registry (one file per objective family)."""

from kdforge.objectives import (  # noqa: F401
    attention_maps,
    ce,
    crd,
    cwtm,
    dist,
    divergences,
    dkd,
    features,
    hidden,
    kd,
    lskd,
    minilm,
    nd,
    ofa,
    pseudo,
    pskd,
    relations,
    review,
    sparse,
    tokens,
    ttm,
    vid,
)
from kdforge.objectives.base import Objective, ObjectiveSpec, objective, register_objective

__all__ = ["Objective", "ObjectiveSpec", "objective", "register_objective"]
