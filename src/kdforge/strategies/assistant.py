"""Teacher assistants (Mirzadeh et al. 2020): teacher → assistant(s) → student, each link a full distillation.

A large capacity gap makes a teacher a poor one; an intermediate model bridges it. The chain may have any length;
every link keeps its model, metrics and checkpoints in its own folder (``assistant-1``, …, ``student``).
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from kdforge.engine.rundir import RunDir
from kdforge.errors import ConfigError
from kdforge.recipe import ModelConfig, Recipe, StrategyConfig
from kdforge.strategies.base import settings, strategy
from kdforge.strategies.chain import Link, TeacherOf, chain_strategy, previous_student
from kdforge.strategies.common import RunOutcome, require_teacher_term
from kdforge.teachers import Teacher


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
    require_teacher_term(recipe, "strategy assistant distils every link from the one before")


@strategy("assistant", AssistantConfig, check)
def assistant(recipe: Recipe, run_dir: RunDir, resume: bool = False) -> RunOutcome:
    """Teacher → assistant(s) → student: each link distilled from the one before, every link kept."""
    cfg = settings(recipe, AssistantConfig)

    def plan(teacher: Teacher | None, info: dict[str, Any]) -> tuple[list[Link], TeacherOf]:
        links = [Link(f"assistant-{i + 1}", model, recipe.objectives, recipe.seed) for i, model in enumerate(cfg.chain)]
        links.append(Link("student", recipe.student, recipe.objectives, recipe.seed))
        return links, previous_student((teacher, info))

    return chain_strategy(recipe, run_dir, resume, "assistant", plan)
