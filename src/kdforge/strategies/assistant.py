"""Teacher assistants (Mirzadeh et al. 2020): teacher → assistant(s) → student, each link a full distillation.

A large capacity gap makes a teacher a poor one; an intermediate model bridges it. The chain may have any length;
every link keeps its model, metrics and checkpoints in its own folder (``assistant-1``, …, ``student``).
"""

from __future__ import annotations

from accelerate.utils import set_seed
from pydantic import ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from kdforge.data.recipe_data import load_data
from kdforge.engine.rundir import RunDir
from kdforge.errors import ConfigError
from kdforge.recipe import ModelConfig, Recipe, StrategyConfig
from kdforge.strategies.base import settings, strategy
from kdforge.strategies.chain import Link, previous_student, run_chain, stage_rows
from kdforge.strategies.common import SUMMARY, RunOutcome, needs_teacher, start
from kdforge.strategies.provision import provide_teacher, require_classification


class AssistantConfig(StrategyConfig):
    """``strategy: {name: assistant, chain: [{name: cnn, params: {width: 8}}]}``: models between teacher and student."""

    model_config = ConfigDict(extra="forbid")
    chain: list[ModelConfig] = Field(default_factory=list, description="assistant models, largest first")

    @field_validator("chain")
    @classmethod
    def _not_empty(cls, value: list[ModelConfig]) -> list[ModelConfig]:
        if not value:
            raise PydanticCustomError(
                "empty_chain",
                "empty: name at least one assistant model between the teacher and the student, e.g. "
                "[{name: cnn, params: {width: 8}}] (without assistants use strategy offline)",
            )
        return value


def check(recipe: Recipe) -> None:
    """The chain starts at a teacher, and every link needs a teacher term."""
    if recipe.teacher is None:
        raise ConfigError(
            "teacher: strategy assistant needs a teacher at the head of the chain (teacher: {model: ...})"
        )
    if not any(needs_teacher(spec, name) for name, spec in recipe.objectives.items()):
        raise ConfigError(
            f"objectives: strategy assistant distils every link from the one before, but {sorted(recipe.objectives)} "
            "has no teacher term; add one, e.g. {kd: {T: 4, alpha: 0.9}}"
        )


@strategy("assistant", AssistantConfig, check)
def assistant(recipe: Recipe, run_dir: RunDir, resume: bool = False) -> RunOutcome:
    """Teacher → assistant(s) → student: each link distilled from the one before, every link kept."""
    cfg = settings(recipe, AssistantConfig)
    acc, done = start(recipe, run_dir, resume)
    if done is not None:
        return RunOutcome(done)
    set_seed(recipe.seed)
    bundle = load_data(recipe)
    require_classification(bundle, "strategy assistant")
    run_dir.write_json("labels.json", {"labels": bundle.class_names})
    teacher, teacher_info = provide_teacher(recipe, bundle)
    links = [Link(f"assistant-{i + 1}", model, recipe.objectives, recipe.seed) for i, model in enumerate(cfg.chain)]
    links.append(Link("student", recipe.student, recipe.objectives, recipe.seed))
    results = run_chain(recipe, run_dir, bundle, links, previous_student((teacher, teacher_info)), resume)
    final = results[-1]
    summary = {
        **final.summary,
        "name": recipe.name,
        "strategy": recipe.strategy.model_dump(mode="json"),
        "stages": stage_rows(results),
        "teacher": teacher_info,
    }
    run_dir.write_json(SUMMARY, summary)
    acc.wait_for_everyone()
    return RunOutcome(summary, student=final.student, teacher=teacher, bundle=bundle)
