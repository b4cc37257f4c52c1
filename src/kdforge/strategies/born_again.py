"""Born-again networks (Furlanello et al. 2018): K generations of one architecture, each taught by the previous one.

Generation 0 learns from the labels (``first`` terms; from the recipe's teacher when there is one); generation k
from generation k−1 with the recipe's terms (``kd``, or ``cwtm`` for the confidence-weighted variant). With
``ensemble: true`` a last generation is taught by the mean of all generations' probabilities (BAN's ensemble).
"""

from __future__ import annotations

from typing import Any

from accelerate.utils import set_seed
from pydantic import ConfigDict, Field

from kdforge.data.recipe_data import load_data
from kdforge.engine.rundir import RunDir
from kdforge.errors import ConfigError
from kdforge.recipe import Recipe, StrategyConfig
from kdforge.strategies.base import settings, strategy
from kdforge.strategies.chain import Link, LinkResult, previous_student, run_chain, stage_rows
from kdforge.strategies.common import SUMMARY, RunOutcome, ensemble_accuracy, needs_teacher, start
from kdforge.strategies.provision import loaders, provide_teacher, require_classification
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
    if not any(needs_teacher(spec, name) for name, spec in recipe.objectives.items()):
        raise ConfigError(
            f"objectives: strategy born_again teaches every generation after the first from the previous one, but "
            f"{sorted(recipe.objectives)} has no teacher term; add one, e.g. {{kd: {{T: 4, alpha: 0.9}}}} or "
            "{cwtm: 1.0}"
        )


@strategy("born_again", BornAgainConfig, check)
def born_again(recipe: Recipe, run_dir: RunDir, resume: bool = False) -> RunOutcome:
    """Born-again generations of one architecture, each distilled from the last (optionally from their ensemble)."""
    cfg = settings(recipe, BornAgainConfig)
    acc, done = start(recipe, run_dir, resume)
    if done is not None:
        return RunOutcome(done)
    set_seed(recipe.seed)
    bundle = load_data(recipe)
    require_classification(bundle, "strategy born_again")
    run_dir.write_json("labels.json", {"labels": bundle.class_names})
    teacher, teacher_info = provide_teacher(recipe, bundle)
    first = recipe.objectives if teacher is not None else cfg.first
    links = [Link("gen-0", recipe.student, first, recipe.seed)]
    links += [
        Link(f"gen-{k}", recipe.student, recipe.objectives, recipe.seed + k) for k in range(1, cfg.generations + 1)
    ]
    if cfg.ensemble:
        links.append(Link("gen-ensemble", recipe.student, recipe.objectives, recipe.seed + cfg.generations + 1))
    chain_teacher = previous_student((teacher, teacher_info))

    def teacher_of(k: int, done_links: list[LinkResult]) -> tuple[Teacher | None, dict[str, Any]]:
        if cfg.ensemble and k == len(links) - 1:
            return _mean_of(done_links), {"kind": "ensemble", "members": [r.link.name for r in done_links]}
        return chain_teacher(k, done_links)

    results = run_chain(recipe, run_dir, bundle, links, teacher_of, resume)
    final = results[-1]
    summary = {
        **final.summary,
        "name": recipe.name,
        "strategy": recipe.strategy.model_dump(mode="json"),
        "stages": stage_rows(results),
        "teacher": teacher_info,
    }
    _, evals = loaders(recipe, bundle)
    gens = [r.student for r in results if r.link.name != "gen-ensemble"]
    summary["generations_ensemble_test_accuracy"] = ensemble_accuracy(gens, evals["test"], acc.device)
    run_dir.write_json(SUMMARY, summary)
    acc.wait_for_everyone()
    return RunOutcome(summary, student=final.student, teacher=teacher, bundle=bundle)


def _mean_of(done: list[LinkResult]) -> Teacher:
    """The mean of the finished generations' probabilities, as one teacher."""
    from kdforge.teachers.ensemble import Ensemble

    return Ensemble([Live(r.student) for r in done], aggregate="mean")
