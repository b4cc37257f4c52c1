"""The Objective: a registered loss term with typed parameters and declared needs."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from kdforge.errors import ConfigError
from kdforge.objectives.guards import IGNORE, check_logit_inputs, check_logit_values
from kdforge.registry import OBJECTIVES, did_you_mean
from kdforge.signals import DenseSignal, Needs, Progress, SparseSignal, StudentOutput, TeacherOutput

# Names a logit function may declare to receive training progress from the engine instead of from the recipe.
CONTEXT_NAMES = ("epoch", "progress", "step")
# A row function may also declare ``state``: the term's own state across steps (TAID's interpolation), checkpointed.
ROW_CONTEXT = (*CONTEXT_NAMES, "state")
LabelRule = bool | Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class BuildContext:
    """What a term's ``build`` sees on the first batch: the tensors it consumes and the sizes of the run."""

    term: str
    student: StudentOutput
    teacher: TeacherOutput
    num_classes: int | None = None
    data_size: int | None = None  # rows a memory bank needs: the largest sample id of the training data + 1
    sample_ids: Tensor | None = None  # the training data's sample ids, when known: a bank keeps a row for each

    def features(self, params: Mapping[str, Any]) -> list[tuple[Tensor, Tensor]]:
        """(student, teacher) feature pairs of the term's layer map, in order."""
        from kdforge.objectives.layers import feature_pairs

        return feature_pairs(self.term, params, self.student.features, self.teacher.features)


@dataclass(frozen=True)
class ModelsContext:
    """The modules behind a term's pair, for parameters that depend on them (None where the side is no network)."""

    term: str
    student: nn.Module
    teacher: nn.Module | None


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
    needs_rule: Callable[[Mapping[str, Any]], Needs] | None = None
    inputs: str = "logits"
    state: Callable[[Mapping[str, Any]], Any] | None = None  # the term's own state across steps (FreeMatch)
    # Trainable modules of the term (connectors, embedding heads, memory banks), sized from the first batch.
    build: Callable[[Mapping[str, Any], BuildContext], nn.Module | None] | None = None
    # Parameters that depend on the models (automatic layer maps, Q/K/V paths), fixed before any batch is read.
    resolve: Callable[[Mapping[str, Any], ModelsContext], dict[str, Any]] | None = None
    # Whether teacher logits may be -inf (a class of probability 0, e.g. a masked vocabulary id); see masked_ok.
    masked_teacher: LabelRule = True

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description: name, summary, parameters with defaults, needs."""
        return {
            "name": self.name,
            "summary": self.summary,
            "params": {
                k: {
                    "default": list(p.default) if isinstance(p.default, tuple) else p.default,
                    "type": _type_name(p.annotation),
                }
                for k, p in self.params.items()
            },
            "needs_teacher": self.teacher,
            "needs_labels": self.labels if isinstance(self.labels, bool) else "depends on params",
            "inputs": self.inputs,
            "context": list(self.context),
        }


def _type_name(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def register_objective(
    name: str,
    *,
    teacher: bool = True,
    labels: LabelRule = False,
    needs: Callable[[Mapping[str, Any]], Needs] | None = None,
    inputs: str = "logits",
    state: Callable[[Mapping[str, Any]], Any] | None = None,
    build: Callable[[Mapping[str, Any], BuildContext], nn.Module | None] | None = None,
    resolve: Callable[[Mapping[str, Any], ModelsContext], dict[str, Any]] | None = None,
    masked_teacher: LabelRule = True,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register a loss term.

    ``inputs="logits"``: ``fn(student_logits, teacher_logits, labels, *, params..., [epoch|progress|step])``.
    ``inputs="pair"``: ``fn(pair: PairContext, *, params...)`` for terms that need more than logits (features via a
    connector, hidden states + head, masks); ``needs(params)`` then says what they consume.
    ``state(params)``: the term's state across steps (an object with ``state_dict``/``load_state_dict``, or None for
    these parameters), passed as the keyword ``state`` when the function declares it, and checkpointed with the run.
    ``build(params, BuildContext)``: the term's trainable module (connectors, embedding heads; buffers such as a
    memory bank), sized from the first batch, optimized with the students, checkpointed, dropped by ``export()``;
    the function receives it as ``pair.connector``.
    ``resolve(params, ModelsContext)``: parameters that depend on the models (an automatic layer map), fixed by the
    Distiller before the first batch; ``needs(params)`` then sees the resolved ones.
    ``masked_teacher`` (or a rule on the params): whether the objective stays finite, value and gradient, when some
    teacher logits are -inf (probability 0); where it does not, such a teacher is refused (docs/tensor-guards.md).
    """
    if inputs not in ("logits", "pair"):
        raise ValueError(f"objective {name!r}: inputs must be 'logits' or 'pair', got {inputs!r}")

    def add(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        sig = inspect.signature(fn)
        kw = {k: p for k, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        params = {k: p for k, p in kw.items() if k not in (*CONTEXT_NAMES, "state")}
        missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty]
        if missing:
            raise TypeError(f"objective {name!r}: hyper-parameters need defaults: {missing}")
        context = tuple(k for k in kw if k in (*CONTEXT_NAMES, "state"))
        summary = (inspect.getdoc(fn) or "").splitlines()[0] if fn.__doc__ else ""
        spec = ObjectiveSpec(
            name, fn, params, context, teacher, labels, summary, needs, inputs, state, build, resolve, masked_teacher
        )
        OBJECTIVES.register(name)(spec)
        return fn

    return add


# Kernels that compute a logit objective directly from a top-k SparseSignal, never expanding it to the vocabulary.
SPARSE_KERNELS: dict[str, Callable[..., Tensor]] = {}


def register_sparse(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register ``fn(student_logits, signal: SparseSignal, labels, *, same params...)`` for objective ``name``."""

    def add(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        SPARSE_KERNELS[name] = fn
        return fn

    return add


@dataclass(frozen=True)
class RowSpec:
    """A per-token form of an objective: ``fn(student_rows, target: ChunkTarget, labels, *, params...)`` → (n,).

    Summed over a chunk of tokens at a time by the chunked engine (objectives/chunked.py); the mean of its rows is the
    objective's batch-mean value. ``state`` builds the term's state (an object with update/state_dict/load_state_dict).
    """

    fn: Callable[..., Tensor]
    context: tuple[str, ...]
    state: Callable[[Mapping[str, Any]], Any] | None = None


# Objectives that have a per-token form, by name: causal LMs compute these over chunks of hidden states + head.
ROW_FUNCTIONS: dict[str, RowSpec] = {}


def register_rows(
    name: str, *, state: Callable[[Mapping[str, Any]], Any] | None = None
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register the per-token (row) form of objective ``name``, taking the same hyper-parameters."""

    def add(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        kw = [k for k, p in inspect.signature(fn).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        ROW_FUNCTIONS[name] = RowSpec(fn, tuple(k for k in kw if k in ROW_CONTEXT), state)
        return fn

    return add


# Closed-form gradients of row forms: ``fn(student_rows, target, labels, *, params...)`` → (rows, ∂Σrows/∂rows) or
# None when it does not apply to this target (the engine then takes the autograd path). Same parameters as the rows.
ROW_GRADS: dict[str, Callable[..., tuple[Tensor, Tensor] | None]] = {}


def register_row_grad(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the closed-form gradient of objective ``name``'s row form (saves the autograd graph's memory)."""

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        ROW_GRADS[name] = fn
        return fn

    return add


@dataclass(frozen=True)
class PairContext:
    """What one term sees: the trained side, the teaching side, labels and mask already applied, and progress.

    For sequences the real tokens are selected once per pair and batch: ``student.logits`` is then (T, V), the teacher
    signal holds the same T rows and ``labels`` is (T,).
    """

    student: StudentOutput
    teacher: TeacherOutput
    labels: Tensor | None = None
    progress: Progress = field(default_factory=Progress)
    connector: Any = None  # this term's trainable module (a connector, or what its ``build`` made), when it has one
    tokens: float | None = None  # what token sums are divided by (the global batch's target tokens), when known
    fields: Mapping[str, Tensor] = field(default_factory=dict)  # per-token batch fields (e.g. from_student)
    state: Any = None  # this term's state across steps, when its objective keeps one
    index: Tensor | None = None  # the batch's sample ids (memory banks index by them), when the data gives them
    attention_mask: Tensor | None = None  # (B, S) of a token batch: relation losses over tokens skip padding

    def context(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The values a function declared (epoch, progress, step, state), when known."""
        values = {
            "epoch": self.progress.epoch,
            "progress": self.progress.progress,
            "step": self.progress.step,
            "state": self.state,
        }
        return {k: values[k] for k in names if values.get(k) is not None}


def _choices(fn: Callable[..., Any], key: str) -> tuple[str, ...]:
    """The values a ``Literal[...]`` annotation allows for parameter ``key`` of ``fn`` (empty when it has none)."""
    try:
        hint = typing.get_type_hints(fn).get(key)
    except (NameError, TypeError):
        return ()
    return tuple(typing.get_args(hint)) if typing.get_origin(hint) is typing.Literal else ()


def _coerce(objective: str, key: str, value: Any, default: Any, choices: tuple[str, ...] = ()) -> Any:
    """Check a hyper-parameter against the type of its default, so a bad value fails before training."""
    if default is None:
        return value  # structured values (a layer map) are checked by the objective's own needs/resolve rules
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"objective {objective!r}: parameter {key}={value!r} must be true or false")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"objective {objective!r}: parameter {key}={value!r} must be a number")
        return float(value) if isinstance(default, float) else value
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"objective {objective!r}: parameter {key}={value!r} must be a string")
    if choices and value not in choices:
        raise ConfigError(f"objective {objective!r}: parameter {key}={value!r} must be one of {', '.join(choices)}")
    return value


class Objective:
    """A registered objective bound to its hyper-parameters; call it on tensors or on signals."""

    def __init__(self, spec: ObjectiveSpec, **params: Any):
        unknown = [k for k in params if k not in spec.params]
        if unknown:
            valid = ", ".join(f"{k}={p.default!r}" for k, p in spec.params.items()) or "none"
            hint = did_you_mean(unknown[0], list(spec.params), n=1)
            raise ConfigError(
                f"objective {spec.name!r} has no parameter {unknown[0]!r}.{hint} Valid parameters: {valid}"
            )
        self.spec = spec
        self.params = {
            k: _coerce(spec.name, k, params[k], p.default, _choices(spec.fn, k)) if k in params else p.default
            for k, p in spec.params.items()
        }
        self.name = spec.name
        # Fixed once the parameters are bound; read on every call, so computed once here.
        labels = spec.labels(self.params) if callable(spec.labels) else spec.labels
        needs = Needs(teacher_logits=spec.teacher, labels=labels)
        self.needs = needs | spec.needs_rule(self.params) if spec.needs_rule is not None else needs
        masked = spec.masked_teacher
        # Whether -inf teacher logits (classes of probability 0) keep this term's value and gradient finite.
        self.masked_ok = bool(masked(self.params) if callable(masked) else masked)
        self.ignore_index = int(self.params.get("ignore_index", IGNORE))

    def __call__(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | SparseSignal | None = None,
        labels: Tensor | None = None,
        **ctx: Any,
    ) -> Tensor:
        """Compute the term from plain tensors (or a SparseSignal); context (epoch, progress, step) is optional.

        Guarded first (docs/tensor-guards.md): shapes and devices, then teacher values and label range in one
        read-back, so a NaN/inf teacher or a bad label is a one-line error, never a NaN gradient.
        """
        self._check_inputs(student_logits, teacher_logits, labels)
        labels_used = labels if self.needs.labels else None
        teacher_used = teacher_logits if self.spec.teacher else None
        check_logit_values(self.name, student_logits, teacher_used, labels_used, self.masked_ok, self.ignore_index)
        return self._logit_term(student_logits, teacher_logits, labels, **ctx)

    def _check_inputs(
        self, student_logits: Tensor, teacher_logits: Tensor | SparseSignal | None, labels: Tensor | None
    ) -> None:
        """The checks that need no read-back: inputs present, shapes and devices that can be compared."""
        if self.spec.inputs == "pair":
            raise ConfigError(f"objective {self.name!r} needs more than logits; call it through a Distiller")
        if self.spec.teacher and teacher_logits is None:
            raise ConfigError(f"objective {self.name!r} needs teacher logits; none were given")
        if self.needs.labels and labels is None:
            raise ConfigError(f"objective {self.name!r} needs labels; the batch has none")
        teacher = teacher_logits if self.spec.teacher else None
        check_logit_inputs(self.name, student_logits, teacher, labels, self.needs.labels)

    def _logit_term(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | SparseSignal | None,
        labels: Tensor | None,
        **ctx: Any,
    ) -> Tensor:
        """The term's value from checked logits."""
        extra = {k: ctx[k] for k in self.spec.context if ctx.get(k) is not None}
        if isinstance(teacher_logits, SparseSignal):
            kernel = SPARSE_KERNELS.get(self.name)
            if kernel is not None:
                return kernel(student_logits, teacher_logits, labels, **self.params, **extra)
            # Objectives over a few classes have no sparse kernel; their dense reconstruction is small.
            teacher_logits = teacher_logits.to_dense_logits()
        return self.spec.fn(student_logits, teacher_logits, labels, **self.params, **extra)

    def compute(self, pair: PairContext) -> Tensor:
        """Compute the term for one pair (masks already applied by the Distiller)."""
        if self.spec.inputs == "pair":
            return self.spec.fn(pair, **self.params, **pair.context(self.spec.context))
        signal: Tensor | SparseSignal | None = None
        if self.spec.teacher:
            got = pair.teacher.logits
            if isinstance(got, DenseSignal):
                signal = got.logits
            elif isinstance(got, SparseSignal):
                signal = got
            else:
                raise ConfigError(f"objective {self.name!r} needs teacher logits, got {type(got).__name__}")
        # The Distiller checked this step's teacher values and labels once for every term (one read-back per step).
        self._check_inputs(pair.student.logits, signal, pair.labels)
        return self._logit_term(pair.student.logits, signal, pair.labels, **pair.context(self.spec.context))

    @property
    def rows(self) -> RowSpec | None:
        """This objective's per-token form, when it has one."""
        return ROW_FUNCTIONS.get(self.name)

    def new_state(self, by_rows: bool = False) -> Any:
        """A fresh per-term state (of the row form when ``by_rows``); None when the objective keeps none."""
        factory = (self.rows.state if self.rows is not None else None) if by_rows else self.spec.state
        return None if factory is None else factory(self.params)

    def row_fn(self, progress: Progress, state: Any = None) -> Callable[[Tensor, Any, Tensor | None], Tensor]:
        """The row form bound to this term's parameters, the step's progress and the term's state."""
        spec = self.rows
        if spec is None:
            raise ConfigError(f"objective {self.name!r} has no per-token form")
        values = {"epoch": progress.epoch, "progress": progress.progress, "step": progress.step, "state": state}
        extra = {k: values[k] for k in spec.context if values.get(k) is not None}
        params = self.params

        def bound(s: Tensor, target: Any, labels: Tensor | None) -> Tensor:
            return spec.fn(s, target, labels, **params, **extra)

        closed = ROW_GRADS.get(self.name)
        if closed is not None:

            def with_grad(s: Tensor, target: Any, labels: Tensor | None) -> tuple[Tensor, Tensor] | None:
                return closed(s, target, labels, **params, **extra)

            bound.grad = with_grad  # type: ignore[attr-defined]
        return bound

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"Objective({self.name}: {args})"


def objective(name: str, **params: Any) -> Objective:
    """Return the registered objective ``name`` bound to ``params``."""
    import kdforge.objectives  # noqa: F401  (fills the registry)

    return Objective(OBJECTIVES.get(name), **params)
