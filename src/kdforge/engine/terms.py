"""Objective terms from a recipe: which objective, with which weight, comparing which pair of models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kdforge.engine.balancer import Balancer
from kdforge.errors import ConfigError
from kdforge.objectives.base import Objective, objective

ObjectiveConfig = float | int | Mapping[str, Any]
# Keys of a term's mapping that belong to the term, not to the objective's hyper-parameters.
TERM_KEYS = ("weight", "warmup_steps", "warmup_epochs", "objective", "pair")


@dataclass(frozen=True)
class Term:
    """One weighted loss term: ``objective`` comparing ``student`` (trained) with ``source`` (a teacher or student)."""

    name: str
    objective: Objective
    student: str
    source: str | None

    @property
    def pair(self) -> tuple[str, str | None]:
        """(student, source): terms over the same pair share one masked view of the batch."""
        return self.student, self.source


def parse_pair(text: str, where: str) -> tuple[str, str]:
    """``"student <- teacher"`` → ("student", "teacher")."""
    parts = [p.strip() for p in str(text).split("<-")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{where}.pair={text!r}: expected 'STUDENT <- SOURCE', e.g. 'student <- teacher'")
    return parts[0], parts[1]


def _number(name: str, params: dict[str, Any], key: str, default: float, kind: type) -> float:
    value = params.pop(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ConfigError(f"objectives.{name}.{key}={value!r}: expected a {'n integer' if kind is int else ' number'}")
    if value < 0:
        raise ConfigError(f"objectives.{name}.{key}={value!r}: must be >= 0")
    return kind(value)


def parse_objectives(
    config: Mapping[str, ObjectiveConfig],
    students: Sequence[str] = ("student",),
    sources: Sequence[str] = ("teacher",),
) -> tuple[dict[str, Term], Balancer]:
    """Turn ``{"ce": 0.1, "kd": {"weight": 0.9, "T": 4, "pair": "student <- teacher"}}`` into terms and a Balancer.

    A term without ``pair`` trains the first student; its source is the teacher named ``teacher`` (or the only one).
    """
    if not config:
        raise ConfigError("objectives: at least one objective is required, e.g. {'ce': 1.0}")
    terms: dict[str, Term] = {}
    weights: dict[str, float] = {}
    warmups: dict[str, int] = {}
    warmup_epochs: dict[str, float] = {}
    for name, spec in config.items():
        if isinstance(spec, bool) or not isinstance(spec, (int, float, Mapping)):
            raise ConfigError(f"objectives.{name}: expected a weight or a mapping, got {spec!r}")
        params = dict(spec) if isinstance(spec, Mapping) else {"weight": spec}
        weights[name] = _number(name, params, "weight", 1.0, float)
        warmups[name] = int(_number(name, params, "warmup_steps", 0, int))
        warmup_epochs[name] = _number(name, params, "warmup_epochs", 0.0, float)
        kind = params.pop("objective", name)
        pair = params.pop("pair", None)
        try:
            bound = objective(kind, **params)
        except ConfigError as err:
            raise ConfigError(f"objectives.{name}: {err}") from None
        terms[name] = _term(name, bound, pair, students, sources)
    return terms, Balancer(weights, warmups, warmup_epochs)


def _term(name: str, bound: Objective, pair: Any, students: Sequence[str], sources: Sequence[str]) -> Term:
    # An objective that resolves against the teaching network (an automatic layer map) has a teaching side too.
    taught = bound.needs.teacher or bound.spec.resolve is not None
    if pair is None:
        student = students[0]
        default = "teacher" if "teacher" in sources else (sources[0] if len(sources) == 1 else None)
        source = default if taught else None
        if taught and source is None:
            raise ConfigError(
                f"objectives.{name}: needs a teacher; name the pair, e.g. pair: '{student} <- {sources[0]}'"
                if sources
                else f"objectives {[name]} need a teacher, but none was given"
            )
    elif "<-" not in str(pair):
        # `pair: b` names the trained student of a term without a teacher (b's own CE in mutual learning).
        student, source = str(pair).strip(), None
        if student not in students:
            raise ConfigError(f"objectives.{name}.pair: {student!r} is not a student; students: {list(students)}")
        if taught:
            raise ConfigError(f"objectives.{name}.pair={pair!r}: this objective needs a source: '{student} <- SOURCE'")
    else:
        student, source = parse_pair(pair, f"objectives.{name}")
        if student not in students:
            raise ConfigError(f"objectives.{name}.pair: {student!r} is not a student; students: {list(students)}")
        known = [*sources, *(s for s in students if s != student)]
        if source not in known:
            raise ConfigError(f"objectives.{name}.pair: {source!r} is neither a teacher nor another student: {known}")
    return Term(name, bound, student, source)
