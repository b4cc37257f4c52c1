"""Registered objectives: importing this package fills the registry (one file per objective family)."""

from kdforge.objectives import ce, cwtm, dist, divergences, dkd, features, kd, lskd, pseudo, pskd, sparse, tokens, ttm  # noqa: F401
from kdforge.objectives.base import Objective, ObjectiveSpec, objective, register_objective

__all__ = ["Objective", "ObjectiveSpec", "objective", "register_objective"]
