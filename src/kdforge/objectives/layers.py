"""Layer maps: which student tensor is compared with which teacher tensor, written out or chosen automatically.

A map is written in the recipe as ``layers: ["layer3 -> layer4", ...]`` (or ``[{student: layer3, teacher:
layer4}]``), or named: ``embedding`` (the input of each network's classifier head: its pooled features), ``uniform``
(every student stage to the teacher stage at the same relative depth), ``last`` / ``last-k`` (the last k stages of
each, in order) or ``reverse`` (the uniform pairs with the teacher's order reversed, which the
"layer selection doesn't matter (much)" study found to work too). Named maps are resolved against the stages of the
two networks (kdforge.models.stages) before the first batch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from kdforge.connectors import build_connector
from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.models.stages import embedding_path, feature_stages
from kdforge.signals import Needs

AUTOMATIC = ("embedding", "uniform", "last", "last-K", "reverse")
_LAST = re.compile(r"^last(?:-(\d+))?$")


def is_automatic(value: Any) -> bool:
    """Whether ``value`` names an automatic map rather than writing the pairs out."""
    return isinstance(value, str) and "->" not in value and bool(value.strip())


def _pair(term: str, item: Any) -> tuple[str, str]:
    if isinstance(item, Mapping) and set(item) == {"student", "teacher"}:
        return str(item["student"]).strip(), str(item["teacher"]).strip()
    if isinstance(item, str) and item.count("->") == 1:
        s, t = (part.strip() for part in item.split("->"))
        if s and t:
            return s, t
    raise ConfigError(
        f"objectives.{term}.layers: {item!r} is not a layer pair; expected 'STUDENT_PATH -> TEACHER_PATH' "
        "(e.g. 'layer3 -> layer4') or {student: PATH, teacher: PATH}"
    )


def layer_pairs(term: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The written-out (student path, teacher path) pairs of a term; [] while the map is still automatic."""
    value = params.get("layers")
    if value in (None, "", []):
        s, t = params.get("student_layer", ""), params.get("teacher_layer", "")
        if s and t:
            return [(str(s), str(t))]
        raise ConfigError(
            f"objectives.{term}: needs a layer map: layers: ['STUDENT_PATH -> TEACHER_PATH', ...] or one of "
            f"{', '.join(AUTOMATIC)}"
        )
    return [_pair(term, item) for item in written_items(term, value, "'STUDENT -> TEACHER' pairs")]


def written_items(term: str, value: Any, expected: str) -> list[Any]:
    """The items of a written-out map (one item or a list); [] while the map is automatic."""
    if is_automatic(value):
        return []
    items = [value] if isinstance(value, (str, Mapping)) else value
    if not isinstance(items, Sequence):
        raise ConfigError(f"objectives.{term}.layers={value!r}: expected a list of {expected}")
    return list(items)


def layer_needs(term: str) -> Any:
    """A ``needs`` rule: the student and teacher tensors of the term's layer map."""

    def needs(params: Mapping[str, Any]) -> Needs:
        pairs = layer_pairs(term, params)
        return Needs(student_features=tuple(s for s, _ in pairs), teacher_features=tuple(t for _, t in pairs))

    return needs


def with_default_layers(params: Mapping[str, Any], default: str) -> dict[str, Any]:
    """``params`` with ``layers`` set to the objective's default map when the recipe names none."""
    out = dict(params)
    if out.get("layers") in (None, "", []):
        out["layers"] = default
    return out


def default_layer_rules(term: str, default: str) -> tuple[Any, Any]:
    """A ``needs`` and a ``resolve`` rule for a layer map that falls back to ``default`` (e.g. ``embedding``)."""
    needs = layer_needs(term)

    def needs_rule(params: Mapping[str, Any]) -> Needs:
        return needs(with_default_layers(params, default))

    def resolve_rule(params: Mapping[str, Any], models: Any) -> dict[str, Any]:
        return resolve_layers(with_default_layers(params, default), models)

    return needs_rule, resolve_rule


def automatic_pairs(name: str, student: Sequence[str], teacher: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs a named map gives for these stage lists (shallow to deep)."""
    n_s, n_t = len(student), len(teacher)
    if not n_s or not n_t:
        raise ConfigError(f"layer map {name!r}: no stages to map ({n_s} student, {n_t} teacher)")
    last = _LAST.match(name)
    if last:
        k = int(last.group(1) or 1)
        if k < 1 or k > min(n_s, n_t):
            raise ConfigError(f"layer map {name!r}: k={k} but the student has {n_s} stages and the teacher {n_t}")
        return list(zip(student[n_s - k :], teacher[n_t - k :], strict=True))
    if name not in ("uniform", "reverse"):
        raise ConfigError(f"layers={name!r}: expected one of {', '.join(AUTOMATIC)} or a list of 'STUDENT -> TEACHER'")
    # The shallower network keeps every stage; the deeper one gives the stage at the same relative depth.
    if n_s <= n_t:
        pairs = [(student[i], teacher[(i + 1) * n_t // n_s - 1]) for i in range(n_s)]
    else:
        pairs = [(student[(j + 1) * n_s // n_t - 1], teacher[j]) for j in range(n_t)]
    if name == "reverse":
        chosen = [t for _, t in pairs][::-1]
        pairs = [(s, t) for (s, _), t in zip(pairs, chosen, strict=True)]
    return pairs


def resolve_layers(params: Mapping[str, Any], models: Any) -> dict[str, Any]:
    """A ``resolve`` rule: a named map written out from the stages of the two networks."""
    value = params.get("layers")
    if not is_automatic(value):
        return dict(params)
    if models.teacher is None:
        raise ConfigError(
            f"objectives.{models.term}.layers={value!r}: the teaching side is not a network kdforge can look into; "
            "write the pairs out: layers: ['STUDENT_PATH -> TEACHER_PATH']"
        )
    try:
        if value == "embedding":
            pairs = [(embedding_path(models.student), embedding_path(models.teacher))]
        else:
            pairs = automatic_pairs(value, feature_stages(models.student), feature_stages(models.teacher))
    except ConfigError as err:
        raise ConfigError(f"objectives.{models.term}.layers: {err}") from None
    return {**params, "layers": [f"{s} -> {t}" for s, t in pairs]}


def feature_pairs(
    term: str, params: Mapping[str, Any], student: Mapping[str, Tensor], teacher: Any
) -> list[tuple[Tensor, Tensor]]:
    """The recorded (student, teacher) tensors of each pair of the term's map."""
    tensors = {} if teacher is None else (teacher.tensors if hasattr(teacher, "tensors") else teacher)
    out = []
    for s, t in layer_pairs(term, params):
        if s not in student:
            raise ConfigError(f"objectives.{term}: the student returned no feature {s!r}")
        if t not in tensors:
            raise ConfigError(f"objectives.{term}: the teaching side returned no feature {t!r}")
        out.append((student[s], tensors[t]))
    return out


def connect_each(params: Mapping[str, Any], ctx: Any) -> nn.Module:
    """A ``build`` rule: one connector of kind ``params['connector']`` per layer pair, sized from the first batch."""
    kind = params.get("connector") or "linear"
    modules = []
    for (s, t), (s_name, t_name) in zip(ctx.features(params), layer_pairs(ctx.term, params), strict=True):
        try:
            modules.append(build_connector(kind, s, t))
        except ShapeMismatchError as err:
            raise ShapeMismatchError(f"objectives.{ctx.term}: {s_name!r} -> {t_name!r}: {err}") from None
    return nn.ModuleList(modules)


def check_student_paths(terms: Mapping[str, Any], student: nn.Module) -> None:
    """Fail before a teacher is trained or data is batched when a written-out map names no module of the student."""
    from kdforge.capture import Recorder

    for name, term in terms.items():
        paths = term.objective.needs.student_features
        if paths:
            try:
                Recorder(student, paths).remove()
            except ConfigError as err:
                raise ConfigError(f"objectives.{name}: {err}") from None
