"""Born-again networks (Furlanello et al. 2018): K generations of one architecture, each taught by the previous one.

Generation 0 learns from the labels (``first`` terms; from the recipe's teacher when there is one); generation k
from generation k−1 with the recipe's terms (``kd``, or ``cwtm`` for the confidence-weighted variant). With
``ensemble: true`` a last generation is taught by the mean of all generations' probabilities (BAN's ensemble).
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from kdforge.data import DataBundle
from kdforge.engine.rundir import RunDir
from kdforge.engine.trainer import get_accelerator
from kdforge.recipe import Recipe, StrategyConfig
from kdforge.strategies.base import settings, strategy
from kdforge.strategies.chain import Link, LinkResult, TeacherOf, chain_strategy, previous_student
from kdforge.strategies.common import RunOutcome, ensemble_accuracy, require_teacher_term
from kdforge.strategies.provision import loaders
from kdforge.teachers import Live, Teacher


class BornAgainConfig(StrategyConfig):
    """``strategy: {name: born_again, generations: 2, ensemble: false}``."""

    model_config = ConfigDict(extra="forbid")
    generations: int = Field(2, ge=1, le=20, description="generations distilled after generation 0")
    first: dict[str, Any] = Field(
        default_factory=lambda: {"ce": 1.0}, description="terms of generation 0 when the recipe has no teacher"
    )
    ensemble: bool = Field(False, description="add a generation taught by the mean of all earlier generations")


def check(recipe: Recipe) -> None:
    """Generations after the first learn from a teacher: the recipe's terms must include a teacher term."""
    require_teacher_term(recipe, "strategy born_again teaches every generation after the first from the previous one")


@strategy("born_again", BornAgainConfig, check)
def born_again(recipe: Recipe, run_dir: RunDir, resume: bool = False) -> RunOutcome:
    """Born-again generations of one architecture, each distilled from the last (optionally from their ensemble)."""
    cfg = settings(recipe, BornAgainConfig)

    def plan(teacher: Teacher | None, info: dict[str, Any]) -> tuple[list[Link], TeacherOf]:
        first = recipe.objectives if teacher is not None else cfg.first
        links = [Link("gen-0", recipe.student, first, recipe.seed)]
        for k in range(1, cfg.generations + 1):
            links.append(Link(f"gen-{k}", recipe.student, recipe.objectives, recipe.seed + k))
        if cfg.ensemble:
            links.append(Link("gen-ensemble", recipe.student, recipe.objectives, recipe.seed + cfg.generations + 1))
        chain_teacher = previous_student((teacher, info))

        def teacher_of(k: int, done: list[LinkResult]) -> tuple[Teacher | None, dict[str, Any]]:
            if cfg.ensemble and k == len(links) - 1:
                return _mean_of(done), {"kind": "ensemble", "members": [r.link.name for r in done]}
            return chain_teacher(k, done)

        return links, teacher_of

    def extra(results: list[LinkResult], bundle: DataBundle) -> dict[str, Any]:
        _, evals = loaders(recipe, bundle)
        gens = [r.student for r in results if r.link.name != "gen-ensemble"]
        device = get_accelerator().device
        return {"generations_ensemble_test_accuracy": ensemble_accuracy(gens, evals["test"], device)}

    return chain_strategy(recipe, run_dir, resume, "born_again", plan, extra)


def _mean_of(done: list[LinkResult]) -> Teacher:
    """The mean of the finished generations' probabilities, as one teacher."""
    from kdforge.teachers.ensemble import Ensemble

    return Ensemble([Live(r.student) for r in done], aggregate="mean")
