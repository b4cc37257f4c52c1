"""Check a recipe's names and parameters against the registries, before any data is read or model trained."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kdforge.errors import ConfigError
from kdforge.recipe import ModelConfig, Recipe


def preflight(recipe: Recipe) -> None:
    """Check names, parameter names and parameter types of objectives, models and data, without training."""
    from kdforge.data.base import dataset_params
    from kdforge.engine.terms import parse_objectives
    from kdforge.models import model_params
    from kdforge.registry import DATASETS, MODELS

    parse_objectives(recipe.objectives)
    teacher_model = getattr(recipe.teacher, "model", None)
    for where, cfg in (
        ("student", recipe.student),
        # An LLM teacher's model is a name for its server or folder, not a registered network: its kind checks it.
        ("teacher.model", teacher_model if isinstance(teacher_model, ModelConfig) else None),
    ):
        if cfg is None:
            continue
        try:
            valid = model_params(cfg.name)
        except ConfigError as err:
            raise ConfigError(f"{where}.name: {err}") from None
        bad = [k for k in cfg.params if k not in valid]
        if bad:
            raise ConfigError(f"{where}.params.{_key(bad[0])}: unknown parameter; valid: {', '.join(valid) or 'none'}")
        check_types(MODELS.get(cfg.name), cfg.params, f"{where}.params")
    try:
        valid = dataset_params(recipe.data.name)
    except ConfigError as err:
        raise ConfigError(f"data.name: {err}") from None
    bad = [k for k in recipe.data.params if k not in valid]
    if bad:
        raise ConfigError(f"data.params.{_key(bad[0])}: unknown parameter; valid: {', '.join(valid)}")
    check_types(DATASETS.get(recipe.data.name), recipe.data.params, "data.params")


def _key(key: object) -> str:
    """A recipe key as written, or quoted when it is not printable (a newline would split the one-line error)."""
    return key if isinstance(key, str) and key.isprintable() and key.strip() == key and key else repr(key)


def check_types(builder: Callable[..., Any], params: Mapping[str, Any], where: str) -> None:
    """Refuse a parameter whose value does not fit the builder's annotation (or, without one, its default's type)."""
    try:
        hints = typing.get_type_hints(builder)
    except Exception:  # an annotation that does not evaluate here: fall back to the defaults' types
        hints = {}
    signature = inspect.signature(builder)
    for key, value in params.items():
        param = signature.parameters.get(key)
        if param is None:
            continue
        expected = hints.get(key)
        if expected is None and param.default not in (inspect.Parameter.empty, None):
            expected = type(param.default)
        if expected is None:
            continue
        ok, what = _fits(value, expected)
        if not ok:
            raise ConfigError(f"{where}.{key}={value!r}: expected {what}")


_SCALARS: dict[type, tuple[str, Callable[[Any], bool]]] = {
    # bool is an int in Python, but `hidden: true` is a mistake, never a width.
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
}


def _fits(value: Any, expected: Any) -> tuple[bool, str]:
    """Whether ``value`` (parsed from YAML) fits annotation ``expected``, and how to describe what was expected."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        results = [_fits(value, arg) for arg in args]
        names = [what for _, what in results]
        return any(ok for ok, _ in results), " or ".join(dict.fromkeys(names))
    if expected is type(None):
        return value is None, "null"
    if origin is typing.Literal:
        return value in args, "one of " + ", ".join(map(repr, args))
    if origin in (tuple, list, Sequence) or expected in (tuple, list):
        # YAML gives lists; a builder's tuple[int, ...] takes any list of integers.
        item = args[0] if args and (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)) else None
        if not isinstance(value, (list, tuple)):
            return False, f"a list of {_plural(item)}"
        if item is None:
            return True, "a list"
        return all(_fits(v, item)[0] for v in value), f"a list of {_plural(item)}"
    if expected in _SCALARS:
        what, check = _SCALARS[expected]
        return check(value), what
    return True, "anything"  # an annotation this check does not know: the builder decides


def _plural(item: Any) -> str:
    names = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
    return names.get(item, "values")
