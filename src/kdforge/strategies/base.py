"""What every strategy shares: registration with its own recipe section, and the typed section of a recipe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from kdforge.recipe import Recipe, StrategyConfig, strategy_section
from kdforge.registry import STRATEGIES

C = TypeVar("C", bound=StrategyConfig)


def strategy(
    name: str, config: type[StrategyConfig] = StrategyConfig, check: Callable[[Recipe], None] | None = None
) -> Callable[[Any], Any]:
    """Register ``fn(recipe, run_dir, resume)`` as strategy ``name`` whose ``strategy:`` section is ``config``.

    ``check(recipe)`` refuses combinations the section alone cannot see (no teacher, no unlabeled data), at
    validation time — before any data is read or model trained.
    """

    def add(fn: Any) -> Any:
        fn.Config = config
        fn.check = check or (lambda recipe: None)
        return STRATEGIES.register(name)(fn)

    return add


def summary_line(fn: Any) -> str:
    """The first line of a strategy's docstring (what `kdforge recipes` and `kdforge strategies` show)."""
    return (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""


def settings(recipe: Recipe, config: type[C]) -> C:
    """The recipe's strategy section as ``config`` (validated now if the recipe was read before registration)."""
    cfg = recipe.strategy
    if isinstance(cfg, config):
        return cfg
    checked = strategy_section(StrategyConfig.model_validate({**(cfg.model_extra or {}), "name": cfg.name}))
    assert isinstance(checked, config)
    return checked
