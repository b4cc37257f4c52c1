"""The Objective: a registered loss term with typed parameters and declared needs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from kdforge.errors import ConfigError
from kdforge.registry import OBJECTIVES, closest
from kdforge.signals import DenseSignal, Needs, SparseSignal, StudentOutput, TeacherOutput

# Names a logit function may declare to receive training progress from the engine instead of from the recipe.
CONTEXT_NAMES = ("epoch", "progress", "step")
LabelRule = bool | Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: the pure function, its hyper-parameters and what it consumes."""

    name: str
    fn: Callable[..., Tensor]
    params: Mapping[str, inspect.Parameter]
    context: tuple[str, ...]
    teacher: bool
    labels: LabelRule
    summary: str

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description: name, summary, parameters with defaults, needs."""
        return {
            "name": self.name,
            "summary": self.summary,
            "params": {k: {"default": p.default, "type": _type_name(p.annotation)} for k, p in self.params.items()},
            "needs_teacher": self.teacher,
            "needs_labels": self.labels if isinstance(self.labels, bool) else "depends on params",
            "context": list(self.context),
        }


def _type_name(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def register_objective(
    name: str, *, teacher: bool = True, labels: LabelRule = False
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register ``fn(student_logits, teacher_logits, labels, *, params..., [epoch|progress|step])``."""

    def add(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        sig = inspect.signature(fn)
        kw = {k: p for k, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        params = {k: p for k, p in kw.items() if k not in CONTEXT_NAMES}
        missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty]
        if missing:
            raise TypeError(f"objective {name!r}: hyper-parameters need defaults: {missing}")
        context = tuple(k for k in kw if k in CONTEXT_NAMES)
        summary = (inspect.getdoc(fn) or "").splitlines()[0] if fn.__doc__ else ""
        OBJECTIVES.register(name)(ObjectiveSpec(name, fn, params, context, teacher, labels, summary))
        return fn

    return add


def _coerce(objective: str, key: str, value: Any, default: Any) -> Any:
    """Check a hyper-parameter against the type of its default, so a bad value fails before training."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"objective {objective!r}: parameter {key}={value!r} must be true or false")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"objective {objective!r}: parameter {key}={value!r} must be a number")
        return float(value) if isinstance(default, float) else value
    return value


class Objective:
    """A registered objective bound to its hyper-parameters; call it on tensors or on signals."""

    def __init__(self, spec: ObjectiveSpec, **params: Any):
        unknown = [k for k in params if k not in spec.params]
        if unknown:
            valid = ", ".join(f"{k}={p.default!r}" for k, p in spec.params.items()) or "none"
            near = closest(unknown[0], list(spec.params))
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ConfigError(
                f"objective {spec.name!r} has no parameter {unknown[0]!r}.{hint} Valid parameters: {valid}"
            )
        self.spec = spec
        self.params = {
            k: _coerce(spec.name, k, params[k], p.default) if k in params else p.default for k, p in spec.params.items()
        }
        self.name = spec.name
        # Fixed once the parameters are bound; read on every call, so computed once here.
        labels = spec.labels(self.params) if callable(spec.labels) else spec.labels
        self.needs = Needs(teacher_logits=spec.teacher, labels=labels)

    def __call__(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None = None,
        labels: Tensor | None = None,
        **ctx: Any,
    ) -> Tensor:
        """Compute the term from plain tensors; context (epoch, progress, step) is optional."""
        if self.spec.teacher and teacher_logits is None:
            raise ConfigError(f"objective {self.name!r} needs teacher logits; none were given")
        if self.needs.labels and labels is None:
            raise ConfigError(f"objective {self.name!r} needs labels; the batch has none")
        extra = {k: ctx[k] for k in self.spec.context if ctx.get(k) is not None}
        return self.spec.fn(student_logits, teacher_logits, labels, **self.params, **extra)

    def compute(
        self,
        student: StudentOutput,
        teacher: TeacherOutput,
        labels: Tensor | None,
        ctx: Mapping[str, Any],
    ) -> Tensor:
        """Compute the term from the student's output and the teacher's signals."""
        s_logits, mask = student.logits, teacher.mask
        if mask is not None and s_logits.dim() == 3 and tuple(mask.shape) == tuple(s_logits.shape[:2]):
            # Sequences: every term is computed over real tokens only, whatever the teacher put at padding.
            s_logits = s_logits[mask]
            labels = labels[mask] if labels is not None else None
        else:
            mask = None
        t_logits = None
        if self.spec.teacher:
            signal = teacher.logits
            if mask is not None and isinstance(signal, (DenseSignal, SparseSignal)):
                signal = signal.select(mask)
            if isinstance(signal, DenseSignal):
                t_logits = signal.logits
            elif isinstance(signal, SparseSignal):
                # A top-k store feeds logit objectives through its dense reconstruction (tail spread uniformly);
                # the store's measured fidelity says what that approximation costs.
                t_logits = signal.to_dense_logits()
            else:
                raise ConfigError(f"objective {self.name!r} needs teacher logits, got {type(signal).__name__}")
        return self(s_logits, t_logits, labels, **ctx)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"Objective({self.name}: {args})"


def objective(name: str, **params: Any) -> Objective:
    """Return the registered objective ``name`` bound to ``params``."""
    import kdforge.objectives  # noqa: F401  (fills the registry)

    return Objective(OBJECTIVES.get(name), **params)
