"""Several teachers, one student: the recipe's teacher is an ``ensemble`` whose aggregation rule (mean, fixed
weights, per-sample confidence/entropy, routing by a tag or a learned gate, teacher dropping) makes one target."""

from __future__ import annotations

from kdforge.engine.rundir import RunDir
from kdforge.errors import ConfigError
from kdforge.recipe import Recipe
from kdforge.strategies.base import strategy
from kdforge.strategies.common import RunOutcome
from kdforge.strategies.offline import distil


def check(recipe: Recipe) -> None:
    """The teacher must be an ensemble of at least two members."""
    kind = None if recipe.teacher is None else recipe.teacher.kind
    if kind != "ensemble":
        raise ConfigError(
            f"teacher.kind={kind!r}: strategy multi_teacher needs teacher.kind=ensemble with its members, e.g. "
            "{kind: ensemble, members: [{model: ...}, {model: ...}], aggregate: mean}"
        )


@strategy("multi_teacher", check=check)
def multi_teacher(recipe: Recipe, run_dir: RunDir, resume: bool = False) -> RunOutcome:
    """One student distilled from an ensemble of teachers under the ensemble's aggregation rule."""
    return distil(recipe, run_dir, resume)
