"""Distiller: named students, teachers and connectors, and the objective terms between them; one call per batch."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from kdforge.adapters import ModelAdapter, adapter_for
from kdforge.batch import as_batch
from kdforge.engine.terms import ObjectiveConfig, Term, parse_objectives
from kdforge.errors import ConfigError, NonFiniteSignalError, ShapeMismatchError
from kdforge.objectives.base import BuildContext, ModelsContext, Objective, PairContext
from kdforge.objectives.chunked import ChunkPlan, ChunkTarget, chunked_row_sums
from kdforge.objectives.guards import label_flags, label_problem, logit_flags, logit_problem, value_flags, value_problem
from kdforge.signals import (
    DenseSignal,
    FeatureSignal,
    HeadSignal,
    Needs,
    Progress,
    SparseSignal,
    StudentOutput,
    TeacherOutput,
)
from kdforge.teachers.base import Teacher, evaluation_model
from kdforge.teachers.live import Live

IGNORE = -100  # label of positions without a target, as in F.cross_entropy
# Per-sample batch fields the row forms of token objectives may read, one value per sequence (DistiLLM-2's origin).
ROW_FIELDS = ("from_student",)


@dataclass
class DistillOutput:
    """One batch's result: the total loss, each term before and after weighting, and every student's output."""

    loss: Tensor
    terms: dict[str, Tensor]
    weighted: dict[str, Tensor]
    student_logits: Tensor
    teacher: TeacherOutput = field(default_factory=TeacherOutput)
    outputs: dict[str, StudentOutput] = field(default_factory=dict)
    tokens: int | None = None  # target tokens the loss was averaged over, when every term is a token term


def _outputs(out: StudentOutput) -> int:
    """Outputs per position: the logits' last dimension, or the rows of the head when logits are made per chunk."""
    if out.logits is not None:
        return int(out.logits.shape[-1])
    return int(out.head.weight.shape[0]) if out.head is not None else 0


def _signal_vocab(signal: Any) -> int | None:
    """The vocabulary size of a teaching signal (None without one)."""
    if isinstance(signal, (HeadSignal, SparseSignal)):
        return signal.vocab_size
    if isinstance(signal, DenseSignal):
        return int(signal.logits.shape[-1])
    return None


def _named(value: Any, default: str) -> dict[str, Any]:
    if value is None:
        return {}
    return dict(value) if isinstance(value, Mapping) else {default: value}


def _to(out: TeacherOutput, device: torch.device) -> TeacherOutput:
    """A teacher's output on the student's device (a GPU teacher with a CPU student, or the reverse)."""
    feats = None
    if out.features is not None:
        feats = FeatureSignal({k: v.to(device) for k, v in out.features.tensors.items()})
    return TeacherOutput(
        logits=None if out.logits is None else out.logits.to(device),
        features=feats,
        mask=None if out.mask is None else out.mask.to(device),
    )


class Distiller(nn.Module):
    """Students (trained), teachers (frozen or updated by hooks), connectors, and terms naming the pair they compare.

    ``Distiller(student, teacher, {"ce": 0.1, "kd": {"weight": 0.9, "T": 4}})`` is the one-student case;
    ``Distiller({"a": m1, "b": m2}, None, {"ce_a": {"objective": "ce", "pair": "a <- b"}, ...})`` trains two at once.
    """

    def __init__(
        self,
        student: nn.Module | Mapping[str, nn.Module],
        teacher: Teacher | nn.Module | Mapping[str, Teacher | nn.Module] | None = None,
        objectives: Mapping[str, ObjectiveConfig] | None = None,
        *,
        connectors: Mapping[str, nn.Module] | None = None,
        adapters: Mapping[str, str] | None = None,
        chunk_size: int = 512,
        compare_vocab: int | None = None,
        views: Sequence[str] = (),
    ):
        super().__init__()
        self.students = nn.ModuleDict(_named(student, "student"))
        if not self.students:
            raise ConfigError("Distiller: at least one student is required")
        teachers = _named(teacher, "teacher")
        self.teachers: dict[str, Teacher] = {k: Live(t) if isinstance(t, nn.Module) else t for k, t in teachers.items()}
        for k, t in self.teachers.items():
            if not isinstance(t, Teacher):
                raise ConfigError(
                    f"Distiller: teacher {k!r} is a {type(t).__name__}; expected an nn.Module or a subclass of "
                    "kdforge.teachers.Teacher (its hooks have defaults: override signals() only)"
                )
        clash = set(self.teachers) & set(self.students)
        if clash:
            raise ConfigError(f"Distiller: {sorted(clash)} name both a student and a teacher")
        # A view ``name@v`` is student ``name`` run on the batch's ``input@v`` (a strongly augmented copy, say): an
        # extra forward of the same weights that terms may name as a pupil or a source; it is never a module of its own.
        self.views = {f"{k}@{v}": (k, v) for v in views for k in self.students}
        pupils = [*self.students, *self.views]
        self.terms, self.balancer = parse_objectives(objectives or {"ce": 1.0}, pupils, list(teachers))
        self.terms = {name: self._resolve(term) for name, term in self.terms.items()}
        used = {t.student for t in self.terms.values()} | {t.source for t in self.terms.values()}
        self.views = {k: v for k, v in self.views.items() if k in used}
        self.connectors = nn.ModuleDict(dict(connectors or {}))
        self.adapters: dict[str, ModelAdapter] = {
            k: adapter_for(m, (adapters or {}).get(k)) for k, m in self.students.items()
        }
        if chunk_size < 1:
            raise ConfigError(f"Distiller: chunk_size={chunk_size}; expected a positive number of tokens per chunk")
        self.chunk_size = chunk_size
        # A padded LM head (same tokenizer, more rows) compares only the rows both heads share; set by the caller
        # after it checked the tokenizers (kdforge.lm.vocab), never guessed here from the sizes alone.
        self.compare_vocab = compare_vocab
        # Causal LMs compute every term that has a per-token form over chunks of hidden states + head.
        self.by_rows = {
            n: self.adapter(t.student).causal_lm and t.objective.rows is not None for n, t in self.terms.items()
        }
        states = {n: self.terms[n].objective.new_state(by_rows=rows) for n, rows in self.by_rows.items()}
        self.term_states = {k: v for k, v in states.items() if v is not None}
        self._last_values: dict[str, Tensor] = {}
        self.needs = Needs()
        self.student_needs = {k: Needs() for k in [*self.students, *self.views]}
        self.teacher_needs: dict[str, Needs] = {}
        self.taught_by: dict[str, str] = {}  # teacher → the first student it teaches (what PS-KD observes)
        for term in self.terms.values():
            self._add_needs(term)
        for t in self.teachers.values():
            t.setup(dict(self.students))
        self._prepared = False
        self._num_outputs: dict[str, int] = {}
        self._step = 0
        self.data_size: int | None = None
        self.sample_ids: Tensor | None = None

    def _network(self, name: str | None) -> nn.Module | None:
        """The module behind a student, a view of one, or a teacher (None for teachers that are no network)."""
        if name is None:
            return None
        if name in self.views:
            name = self.views[name][0]
        if name in self.students:
            return self.students[name]
        return evaluation_model(self.teachers.get(name))

    def _resolve(self, term: Term) -> Term:
        """Fix the parameters that depend on the networks (an automatic layer map) before any batch is read."""
        spec = term.objective.spec
        if spec.resolve is None:
            return term
        student = self._network(term.student)
        assert student is not None
        try:
            params = spec.resolve(
                dict(term.objective.params), ModelsContext(term.name, student, self._network(term.source))
            )
            bound = Objective(spec, **params)
        except ConfigError as err:
            text = str(err)
            raise ConfigError(text if text.startswith("objectives.") else f"objectives.{term.name}: {text}") from None
        return replace(term, objective=bound)

    def _add_needs(self, term: Term) -> None:
        needs = term.objective.needs
        rows = self.by_rows[term.name]
        if rows:
            needs = needs | Needs(student_hidden=True, teacher_hidden=needs.teacher_logits)
        self.needs = self.needs | needs
        own = Needs(
            labels=needs.labels,
            student_features=needs.student_features,
            student_hidden=needs.student_hidden,
            student_logits=not rows,
        )
        self.student_needs[term.student] = self.student_needs[term.student] | own
        if term.source in self.teachers:
            asked = Needs(
                teacher_logits=needs.teacher_logits,
                teacher_features=needs.teacher_features,
                teacher_hidden=needs.teacher_hidden,
            )
            self.teacher_needs[term.source] = self.teacher_needs.get(term.source, Needs()) | asked
            self.taught_by.setdefault(term.source, term.student)
        elif term.source is not None:
            # A student teaching another records the features its pupil's term asks of the teaching side.
            self.student_needs[term.source] |= Needs(student_features=needs.teacher_features)

    # -- the modules ------------------------------------------------------------------------------------------------

    @property
    def student(self) -> nn.Module:
        """The first (often only) student."""
        return next(iter(self.students.values()))

    @property
    def teacher(self) -> Teacher | None:
        """The teacher named ``teacher`` (or the first one), None when there is none."""
        return self.teachers.get("teacher", next(iter(self.teachers.values()), None))

    def adapter(self, name: str) -> ModelAdapter:
        """The adapter a student (or a view of one, ``name@v``) runs through."""
        return self.adapters[self.views[name][0] if name in self.views else name]

    def trainable(self) -> dict[str, nn.Module]:
        """Every module the optimizer updates, by name: the students, then ``connector.<term>``."""
        out = dict(self.students.items())
        # A connector without parameters (identity) has nothing to train or save, and DDP refuses such a module.
        out.update({f"connector.{k}": m for k, m in self.connectors.items() if any(True for _ in m.parameters())})
        return out

    def stateful(self) -> dict[str, nn.Module]:
        """What a checkpoint holds: ``trainable()`` plus connectors that keep only buffers (ND's class means)."""
        out = self.trainable()
        for k, m in self.connectors.items():
            if f"connector.{k}" not in out and any(True for _ in m.buffers()):
                out[f"connector.{k}"] = m
        return out

    @torch.no_grad()
    def parameters_to_train(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates: every student's and every connector's."""
        return [p for m in self.trainable().values() for p in m.parameters() if p.requires_grad]

    def wrap(self, name: str, runner: nn.Module) -> None:
        """Run student ``name`` through ``runner`` (e.g. a DDP wrapper) while exporting the raw module."""
        if name in self.adapters:
            self.adapters[name].runner = runner

    def wrap_student(self, runner: nn.Module) -> None:
        """Run the first student through ``runner``."""
        self.wrap(next(iter(self.students)), runner)

    def export(self, name: str | None = None) -> nn.Module:
        """A plain student: no hooks, no teacher, no connector or wrapper attached."""
        for adapter in self.adapters.values():
            adapter.release()
        self._prepared = False
        return self.students[name] if name is not None else self.student

    # -- set-up -----------------------------------------------------------------------------------------------------

    def prepare(
        self, batch: Any, explicit: bool = True, data_size: int | None = None, sample_ids: Tensor | None = None
    ) -> None:
        """Attach recorders (a wrong path fails here) and build connectors from this batch's shapes.

        ``data_size``: the training data's largest sample id + 1; ``sample_ids``: its ids (a memory bank keeps one
        row per training sample), when known.
        """
        if self._prepared:
            return
        if data_size is not None:
            self.data_size = data_size
        if sample_ids is not None:
            self.sample_ids = torch.as_tensor(sample_ids).view(-1).long()
        batch = as_batch(batch)
        try:
            for name, adapter in self.adapters.items():
                # A view runs its student's weights: the student records what either asks for.
                paths = [*self.student_needs[name].student_features]
                for view, (base, _) in self.views.items():
                    if base == name:
                        paths += self.student_needs[view].student_features
                adapter.record(tuple(dict.fromkeys(paths)))
            missing = [t for t in self.terms.values() if t.objective.spec.build and t.name not in self.connectors]
            if missing:
                self._build_connectors(batch, missing)
        except Exception:
            # A refused layer or shape must not leave hooks (or eager attention) on the user's models.
            for adapter in self.adapters.values():
                adapter.release()
            for teacher in self.teachers.values():
                release = getattr(getattr(teacher, "adapter", None), "release", None)
                if release is not None:
                    release()
            raise
        if missing:
            built = [t.name for t in missing if t.name in self.connectors]
            if not explicit and any(p.requires_grad for n in built for p in self.connectors[n].parameters()):
                warnings.warn(
                    f"connectors {built} were built on the first batch; an optimizer created "
                    "before it does not update them: call distiller.prepare(first_batch) before creating it "
                    "(the Trainer does)",
                    stacklevel=3,
                )
        self._prepared = True

    @torch.no_grad()
    def _build_connectors(self, batch: dict[str, Any], terms: list[Term]) -> None:
        # One look at the shapes, in eval mode so no BatchNorm statistic or dropout draw differs from a run without it.
        modes = {k: m.training for k, m in self.students.items()}
        self.students.eval()
        try:
            outs = {k: self.adapters[k](batch, self.student_needs[k]) for k in self.students}
            for name, (student, view) in self.views.items():
                outs[name] = self.adapters[student](self._view(batch, view), self.student_needs[name])
            device = next((p.device for p in self.students.parameters()), torch.device("cpu"))
            for term in terms:
                teaching = _to(self._teaching_side(term.source, batch, outs), device)
                out = outs[term.student]
                classes = int(out.logits.shape[-1]) if out.logits is not None else None
                ctx = BuildContext(term.name, out, teaching, classes, self.data_size, self.sample_ids)
                module = term.objective.spec.build(term.objective.params, ctx)
                if module is not None:
                    # In the Distiller's mode: a module built during an evaluation must not learn (CRD's banks, ND's
                    # means, BatchNorm statistics).
                    self.connectors[term.name] = module.to(device).train(self.training)
        finally:
            for k, m in self.students.items():
                m.train(modes[k])

    def _teaching_side(
        self, source: str | None, batch: dict[str, Any], outs: dict[str, StudentOutput]
    ) -> TeacherOutput:
        if source is None:
            return TeacherOutput()
        if source in self.teachers:
            return self._signals(source, batch, self.teacher_needs.get(source, Needs()))
        return outs[source].as_teacher()

    def _signals(self, name: str, batch: dict[str, Any], needs: Needs) -> TeacherOutput:
        """Teacher ``name``'s signals; a path it cannot record is reported as the teacher's, not the student's."""
        try:
            return self.teachers[name].signals(batch, needs)
        except ConfigError as err:
            text = str(err)
            if text.startswith("Recorder:"):
                raise ConfigError(f"teacher {name!r}: {text}") from None
            raise

    # -- checks -----------------------------------------------------------------------------------------------------

    def check(self, batch: dict[str, Any], outs: dict[str, StudentOutput], teachers: dict[str, TeacherOutput]) -> None:
        """Fail before the first step when labels are missing or a pair's outputs cannot be compared."""
        if self.needs.labels and batch.get("label") is None:
            users = [n for n, t in self.terms.items() if t.objective.needs.labels]
            raise ConfigError(f"objectives {users} need labels, but the batch has none")
        for term in self.terms.values():
            out = outs[term.student]
            if out.logits is None:
                self._check_tokens(term, batch, out, teachers)
                continue
            logits = out.logits
            if term.objective.needs.labels:
                labels = batch["label"]
                if labels.numel() != logits[..., 0].numel():
                    raise ShapeMismatchError(
                        f"labels of shape {tuple(labels.shape)} do not fit student logits of shape "
                        f"{tuple(logits.shape)} (student {term.student!r}): expected one label per output position "
                        "(a classifier's data for a classifier, next-token labels for a sequence model)"
                    )
            if not term.objective.needs.teacher_logits or term.source is None:
                continue
            signal = teachers[term.source].logits if term.source in teachers else DenseSignal(outs[term.source].logits)
            t_shape = None
            if isinstance(signal, DenseSignal):
                t_shape = tuple(signal.logits.shape)
            elif isinstance(signal, SparseSignal):
                t_shape = (*signal.ids.shape[:-1], signal.vocab_size)
            if t_shape is not None and t_shape != tuple(logits.shape):
                raise ShapeMismatchError(
                    f"objectives.{term.name}: teacher logits shape {t_shape} (from {term.source!r}) and student "
                    f"logits shape {tuple(logits.shape)} (of {term.student!r}) cannot be compared: the objective "
                    "needs the same shape (same number of classes and positions)"
                )

    def vocab_sizes(self, term_name: str, outs: dict[str, StudentOutput], teachers: dict[str, TeacherOutput]):
        """(student head rows, teaching side's vocabulary) of a term computed over hidden states + head."""
        term = self.terms[term_name]
        student_rows = _outputs(outs[term.student])
        if term.source is None or not term.objective.needs.teacher_logits:
            return student_rows, None
        signal = teachers[term.source].logits if term.source in teachers else outs[term.source].as_teacher().logits
        return student_rows, _signal_vocab(signal)

    def _check_tokens(
        self, term: Term, batch: dict[str, Any], out: StudentOutput, teachers: dict[str, TeacherOutput]
    ) -> None:
        """A token term: hidden states (B, S, H), labels (B, S), and vocabularies that are the same or aligned."""
        hidden = out.hidden
        if hidden is None or hidden.dim() != 3 or out.head is None:
            raise ShapeMismatchError(
                f"objectives.{term.name}: student {term.student!r} is a causal LM but returned no (batch, tokens, "
                "hidden) states and head; expected a transformers …ForCausalLM or a model with return_hidden"
            )
        labels = batch.get("label")
        if term.objective.needs.labels and (labels is None or tuple(labels.shape) != tuple(hidden.shape[:2])):
            got = None if labels is None else tuple(labels.shape)
            raise ShapeMismatchError(
                f"objectives.{term.name}: labels of shape {got} do not fit a causal LM's tokens "
                f"{tuple(hidden.shape[:2])}; expected next-token labels (batch, tokens), -100 where there is no target"
            )
        student_rows, teacher_rows = self.vocab_sizes(term.name, {term.student: out}, teachers)
        if teacher_rows is None or teacher_rows == student_rows:
            return
        shared = self.compare_vocab
        if shared is None or shared > min(student_rows, teacher_rows):
            raise ShapeMismatchError(
                f"objectives.{term.name}: the teacher's vocabulary has {teacher_rows} rows but the student's head "
                f"{student_rows}: expected the same tokenizer; a padded head (same tokenizer, extra rows) or another "
                "tokenizer needs vocabulary alignment (kdforge run checks the tokenizers and reports the case)"
            )

    def _guard(
        self,
        labels: Tensor | None,
        pairs: Mapping[tuple[str, str | None], PairContext],
        teachers: Mapping[str, TeacherOutput],
    ) -> None:
        """Every batch, one read-back: teachers' signals finite where terms read them, labels in range.

        Teachers only (a student teaching another is checked by its own loss); the signals of each pair are the ones
        its terms see, so whatever a teacher puts at padding is never judged (docs/tensor-guards.md).
        """
        checks: list[tuple[Tensor, Callable[[], str | None], type[Exception]]] = []
        if labels is not None and self.needs.labels:
            # Every batch, not just the first: a label out of range later would index out of bounds inside a loss.
            classes = min(self._num_outputs.values())
            checks.append((label_flags(labels, classes), partial(label_problem, labels, classes), ShapeMismatchError))
        for pair, ctx in pairs.items():
            if pair[1] in teachers:
                checks += self._signal_checks(pair, ctx)
        if not checks:
            return
        device = checks[0][0].device
        found = torch.cat([flags.to(device) for flags, _, _ in checks]).tolist()
        at = 0
        for flags, explain, error in checks:
            hit, at = any(found[at : at + flags.numel()]), at + flags.numel()
            problem = explain() if hit else None
            if problem:
                raise error(problem)

    def _signal_checks(
        self, pair: tuple[str, str | None], ctx: PairContext
    ) -> list[tuple[Tensor, Callable[[], str | None], type[Exception]]]:
        """Flags and explanations of the teacher values one pair's terms read: logits per term, features once."""
        out: list[tuple[Tensor, Callable[[], str | None], type[Exception]]] = []
        source = pair[1]
        terms = [t for t in self.terms.values() if t.pair == pair]
        signal = ctx.teacher.logits
        readers = [t for t in terms if t.objective.needs.teacher_logits]
        if signal is not None and readers:
            # The columns compared: a padded teacher head's extra columns are never read.
            classes = self.compare_vocab if isinstance(signal, DenseSignal) else None
            flags = logit_flags(signal, classes)
            for term in readers:
                where, what = f"objectives.{term.name}", f"teacher logits from {source!r}"
                explain = partial(logit_problem, where, what, signal, term.objective.masked_ok, classes)
                out.append((flags, explain, NonFiniteSignalError))
        features = ctx.teacher.features
        for path, value in features.tensors.items() if features is not None else ():
            if not (torch.is_tensor(value) and value.is_floating_point()):
                continue  # integer values (and whatever else a recorder keeps) cannot be NaN
            users = [t.name for t in terms if path in t.objective.needs.teacher_features] or [t.name for t in terms]
            where, what = f"objectives.{users[0]}", f"teacher features {path!r} from {source!r}"
            out.append((value_flags(value), partial(value_problem, where, what, value), NonFiniteSignalError))
        return out

    # -- one batch --------------------------------------------------------------------------------------------------

    def forward(
        self,
        batch: Any,
        *,
        step: int | None = None,
        epoch: float | None = None,
        progress: float | None = None,
        tokens: float | None = None,
    ) -> DistillOutput:
        """Teacher signals (only those needed), every student's forward, every term, the weighted total.

        ``tokens``: what per-token sums are divided by — the global (all processes, all accumulated micro-batches)
        number of target tokens divided by processes × micro-batches, so that averaging gradients over both gives
        the mean over the global batch's tokens; by default this micro-batch's own target tokens.
        """
        batch = as_batch(batch)
        first = batch["input"]
        if torch.is_tensor(first) and (first.dim() == 0 or first.shape[0] == 0):
            raise ShapeMismatchError(f"empty batch: input of shape {tuple(first.shape)}; expected at least one sample")
        if step is None:
            step = self._step
            self._step += int(self.training)
        self.prepare(batch, explicit=False)
        device = first.device if torch.is_tensor(first) else torch.device("cpu")
        teachers = {k: _to(self._signals(k, batch, needs), device) for k, needs in self.teacher_needs.items()}
        outs = {k: self.adapters[k](batch, self.student_needs[k]) for k in self.students}
        for name, (student, view) in self.views.items():
            outs[name] = self.adapters[student](self._view(batch, view), self.student_needs[name])
        if not self._num_outputs:
            self.check(batch, outs, teachers)
            self._num_outputs = {k: _outputs(o) for k, o in outs.items()}
        when = Progress(step=step, epoch=epoch, progress=progress)
        pairs: dict[tuple[str, str | None], PairContext] = {}
        for term in self.terms.values():
            if term.pair not in pairs:
                pairs[term.pair] = self._pair(term, batch, outs, teachers, when, tokens)
        self._guard(batch.get("label"), pairs, teachers)
        values: dict[str, Tensor] = {}
        by_rows: dict[tuple[str, str | None], list[Term]] = {}
        for term in self.terms.values():
            if self.by_rows[term.name]:
                by_rows.setdefault(term.pair, []).append(term)
                continue
            ctx = pairs[term.pair]
            if term.name in self.connectors:
                ctx = replace(ctx, connector=self.connectors[term.name])
            if term.name in self.term_states:
                ctx = replace(ctx, state=self.term_states[term.name])
            values[term.name] = term.objective.compute(ctx)
        counted: int | None = None
        for pair, group in by_rows.items():
            row_values, counted = self._row_values(group, pairs[pair])
            values.update(row_values)
        values = {k: values[k] for k in self.terms}
        self._last_values = {k: v.detach() for k, v in values.items()}
        total, weighted = self.balancer.combine(values, step, epoch)
        if self.training:
            for name, student in self.taught_by.items():
                self.teachers[name].observe(batch, outs[student])
        main = next(iter(self.students))
        return DistillOutput(
            loss=total,
            terms={k: v.detach() for k, v in values.items()},
            weighted={k: w.detach() for k, w in weighted.items()},
            student_logits=outs[main].logits if outs[main].logits is not None else outs[main].hidden,
            teacher=teachers.get("teacher", next(iter(teachers.values()), TeacherOutput())),
            outputs=outs,
            tokens=counted if tokens is None and all(self.by_rows.values()) else None,
        )

    @staticmethod
    def _view(batch: dict[str, Any], view: str) -> dict[str, Any]:
        """The batch with ``input@view`` as its input (the other view of the same samples)."""
        key = f"input@{view}"
        if key not in batch:
            raise ConfigError(
                f"objectives name the view {view!r}, but the batch has no {key!r}; expected the data to draw that "
                f"view (an extra view of the training set), got keys {sorted(batch)}"
            )
        return {**batch, "input": batch[key]}

    def _pair(
        self,
        term: Term,
        batch: dict[str, Any],
        outs: dict[str, StudentOutput],
        teachers: dict[str, TeacherOutput],
        when: Progress,
        tokens: float | None = None,
    ) -> PairContext:
        """The masked view of one (student, source) pair, built once per batch and shared by its terms."""
        labels = batch.get("label")
        student = outs[term.student]
        if term.source is None:
            teaching = TeacherOutput()
        elif term.source in teachers:
            teaching = teachers[term.source]
        else:
            teaching = outs[term.source].as_teacher()
        mask = teaching.mask if teaching.mask is not None else student.mask
        shaped = student.logits if student.logits is not None else student.hidden
        if mask is None or shaped is None or shaped.dim() != 3 or tuple(mask.shape) != tuple(shaped.shape[:2]):
            attention = batch.get("attention_mask")
            return PairContext(student, teaching, labels, when, index=batch.get("index"), attention_mask=attention)
        lm = self.adapter(term.student).causal_lm
        if lm and labels is not None and tuple(labels.shape) == tuple(mask.shape):
            # A causal LM learns at the positions that have a next-token target: not the last token, not padding,
            # not a masked prompt — the tokens TRL's and torchtune's losses count.
            mask = mask & (labels != IGNORE)
        # Sequences: every term sees real tokens only, whatever the teacher put at padding.
        hidden = None if student.hidden is None else student.hidden[mask]
        logits = None if student.logits is None else student.logits[mask]
        student = replace(student, logits=logits, hidden=hidden)
        signal = teaching.logits.select(mask) if teaching.logits is not None else None
        teaching = replace(teaching, logits=signal)
        fields = {}
        for key in ROW_FIELDS:
            if batch.get(key) is not None:
                value = torch.as_tensor(batch[key]).to(mask.device)
                fields[key] = value[:, None].expand(mask.shape)[mask] if value.dim() == 1 else value[mask]
        selected = None if labels is None else labels[mask]
        attention, index = batch.get("attention_mask"), batch.get("index")
        return PairContext(
            student, teaching, selected, when, tokens=tokens, fields=fields, attention_mask=attention, index=index
        )

    def _row_values(self, group: list[Term], ctx: PairContext) -> tuple[dict[str, Tensor], int]:
        """Terms with a per-token form over one pair: summed a chunk at a time, divided by the target tokens."""
        student = ctx.student
        shaped = student.hidden if student.hidden is not None else student.logits
        assert shaped is not None
        n = int(shaped.shape[0]) if shaped.dim() == 2 else int(shaped[..., 0].numel())
        if ctx.tokens is None and n == 0:
            raise ShapeMismatchError(
                f"objectives {[t.name for t in group]}: every token of this batch is masked (no position has a "
                "next-token target: labels all -100 or attention_mask all 0); expected at least one target token "
                "per batch — check the prompt masking and max_len"
            )
        denominator = float(ctx.tokens) if ctx.tokens is not None else float(n)
        fns = [t.objective.row_fn(ctx.progress, self.term_states.get(t.name)) for t in group]
        signal = ctx.teacher.logits
        teacher_rows = _signal_vocab(signal)
        student_rows = _outputs(student)
        vocab = self.compare_vocab or (teacher_rows if teacher_rows is not None else student_rows)
        if student.hidden is not None and student.head is not None and student.hidden.dim() == 2:
            softcap = self.adapter(group[0].student).softcap
            plan = ChunkPlan(fns, signal, ctx.labels, self.chunk_size, vocab, softcap, ctx.fields)
            sums = chunked_row_sums(student.hidden, student.head, plan)
        else:
            assert student.logits is not None
            s = student.logits.reshape(-1, student.logits.shape[-1]).float()
            target = ChunkTarget(signal, 0, s.shape[0], vocab, ctx.fields)
            labels = None if ctx.labels is None else ctx.labels.reshape(-1)
            sums = torch.stack([fn(s[:, :vocab], target, labels).sum() for fn in fns])
        return {t.name: sums[j] / max(denominator, 1e-12) for j, t in enumerate(group)}, n

    # -- state across steps (TAID's interpolation) ---------------------------------------------------------------

    def on_optimizer_step(self, progress: float | None = None) -> None:
        """Advance every stateful term with the last step's value (TAID's adaptive t)."""
        for name, state in self.term_states.items():
            # Logit objectives' states (FreeMatch) update themselves inside the call, from the batch's targets.
            if self.by_rows[name] and name in self._last_values:
                state.update(float(self._last_values[name]), progress if progress is not None else 0.0)

    def term_state_dict(self) -> dict[str, dict[str, float]]:
        """Every stateful term's state, for a checkpoint."""
        return {k: v.state_dict() for k, v in self.term_states.items()}

    def load_term_state_dict(self, state: Mapping[str, Mapping[str, float]]) -> None:
        """Restore what ``term_state_dict`` returned."""
        for name, values in state.items():
            if name in self.term_states:
                self.term_states[name].load_state_dict(dict(values))
