"""Function matching, "patient and consistent" (Beyer et al. 2022): teacher and student see the identical
augmented, mixed-up view; the loss only matches the teacher (no labels), so unlabeled or out-of-domain inputs serve
as training data; long schedules are the point (set train.epochs accordingly).
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from kdforge.data.mix import Mixup
from kdforge.data.recipe_data import load_data
from kdforge.engine.rundir import RunDir
from kdforge.engine.terms import parse_objectives
from kdforge.errors import ConfigError
from kdforge.recipe import DataConfig, Recipe, StrategyConfig
from kdforge.strategies.base import settings, strategy
from kdforge.strategies.common import RunOutcome
from kdforge.strategies.offline import distil

# Teachers that compute on the batch they are given; stored or per-sample-buffered signals cannot follow a new mix.
LIVE_KINDS = ("live", "ensemble")


class FunctionMatchingConfig(StrategyConfig):
    """``strategy: {name: function_matching, mixup: 1.0, augment: flip_crop}``."""

    model_config = ConfigDict(extra="forbid")
    mixup: float = Field(1.0, ge=0, description="Beta(α, α) concentration of mixup; 0 turns it off")
    augment: str = Field("flip_crop", description="the training view's augmentation (data.params.augment)")
    inputs: DataConfig | None = Field(None, description="other training inputs (unlabeled or out-of-domain data)")


def check(recipe: Recipe) -> None:
    """A live teacher, label-free terms."""
    if recipe.teacher is None:
        raise ConfigError("teacher: strategy function_matching matches a teacher; the recipe has none")
    if recipe.teacher.kind not in LIVE_KINDS:
        raise ConfigError(
            f"teacher.kind={recipe.teacher.kind!r}: strategy function_matching needs a teacher that runs on each "
            f"freshly augmented, mixed batch ({' or '.join(LIVE_KINDS)}); stored or buffered signals cannot follow it"
        )
    terms, _ = parse_objectives(recipe.objectives)
    for name, term in terms.items():
        if term.objective.needs.labels:
            raise ConfigError(
                f"objectives.{name}: strategy function_matching is label-free (mixed inputs have no single label), "
                f"but {term.objective.name!r} needs labels; use e.g. {{kd: {{T: 1.0, alpha: 1.0}}}}"
            )


@strategy("function_matching", FunctionMatchingConfig, check)
def function_matching(recipe: Recipe, run_dir: RunDir, resume: bool = False) -> RunOutcome:
    """Teacher and student on the same augmented, mixed-up view; a label-free loss; any inputs."""
    cfg = settings(recipe, FunctionMatchingConfig)
    # Only the student's training view is augmented: a teacher trained here learns from the clean data, as the
    # teacher of every other recipe on the same data does (and is shared with them through the teacher cache).
    data = cfg.inputs or recipe.data
    if cfg.augment != "none":
        data = data.model_copy(update={"params": {**data.params, "augment": cfg.augment}})
    train_data = load_data(recipe.model_copy(update={"data": data})) if data != recipe.data else None
    transform = Mixup(cfg.mixup, recipe.seed) if cfg.mixup > 0 else None
    return distil(recipe, run_dir, resume, transform=transform, train_data=train_data)
