"""Tensor guards: bad values, shapes, devices, empty and all-masked batches, bad labels (docs/tensor-guards.md).

Every registered logit objective is exercised from the registry, never from a hand-written list, so an objective added
later is covered too.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import kdforge.objectives  # noqa: F401  (fills the registry)
from kdforge.engine.distiller import Distiller
from kdforge.errors import ConfigError, KdforgeError, NonFiniteSignalError, ShapeMismatchError
from kdforge.models import build_model
from kdforge.objectives.base import ROW_FUNCTIONS, Objective
from kdforge.objectives.chunked import ChunkTarget
from kdforge.registry import OBJECTIVES
from kdforge.signals import DenseSignal, Progress, SparseSignal, TeacherOutput
from kdforge.teachers.base import Teacher

AREA = "tensor guards"
LOGIT = [n for n in OBJECTIVES.names() if OBJECTIVES.get(n).inputs == "logits"]
READERS = [n for n in LOGIT if OBJECTIVES.get(n).teacher]  # those that read the teacher's logits
N, C = 4, 10
LABELS = torch.tensor([0, 3, 5, 9])


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, C, generator=g), torch.randn(N, C, generator=g)


def _row_form(obj: Objective, s: torch.Tensor, t: torch.Tensor | SparseSignal, y: torch.Tensor) -> torch.Tensor:
    """The objective as the Distiller computes it for tokens: its row form, with the per-token batch fields."""
    signal = t if isinstance(t, SparseSignal) else DenseSignal(t)
    target = ChunkTarget(signal, 0, s.shape[0], s.shape[-1], {"from_student": torch.arange(s.shape[0]) % 2})
    return obj.row_fn(Progress())(s, target, y).mean()


def _outcome(obj: Objective, s: torch.Tensor, t: torch.Tensor | SparseSignal) -> str:
    """'refused' (a NonFiniteSignalError) or 'finite' (loss and every gradient finite); anything else fails."""
    s = s.clone().requires_grad_()
    try:
        loss = obj(s, t, LABELS)
    except NonFiniteSignalError as err:
        assert f"objective {obj.name!r}" in str(err) and "\n" not in str(err)
        return "refused"
    except ConfigError:
        # An objective that needs per-token batch fields (DistiLLM-2's origin) is computed as the Distiller does.
        assert obj.rows is not None, obj.name
        loss = _row_form(obj, s, t, LABELS)
    loss.backward()
    assert torch.isfinite(loss), (obj.name, float(loss))
    assert torch.isfinite(s.grad).all(), (obj.name, "non-finite gradient")
    return "finite"


@pytest.mark.parametrize("bad", [math.inf, math.nan], ids=["+inf", "nan"])
def test_nan_and_plus_inf_teacher_logits_are_refused_by_every_logit_objective(bad: float, reliability) -> None:
    for name in LOGIT:
        obj = Objective(OBJECTIVES.get(name))
        s, t = _inputs()
        t[1, 4] = bad
        if name not in READERS:
            assert _outcome(obj, s, t) == "finite", name  # the teacher is not read: nothing to refuse
            continue
        with pytest.raises(NonFiniteSignalError) as err:
            obj(s.requires_grad_(), t, LABELS)
        kind = "+inf" if bad > 0 else "NaN"
        count = "(0 NaN, 1 +inf)" if bad > 0 else "(1 NaN, 0 +inf)"
        assert str(err.value).startswith(f"objective {name!r}: teacher logits hold 1 non-finite values {count}"), kind
    label = "+inf" if bad > 0 else "NaN"
    reliability.record(
        AREA,
        f"{label} teacher logit, every logit objective ({len(LOGIT)})",
        f"NonFiniteSignalError naming the objective and the count ({len(READERS)} readers); others ignore the teacher",
        trials=len(LOGIT),
    )


def test_the_issue_case_dkd_ttm_lskd_never_return_a_nan_gradient(reliability) -> None:
    # Before: finite loss (dkd 4.41, ttm 0.39, lskd 0.89) with NaN gradients for one +inf teacher logit.
    for name in ("dkd", "ttm", "lskd"):
        s, t = _inputs()
        t[1, 3] = math.inf
        with pytest.raises(NonFiniteSignalError, match=rf"objective '{name}': teacher logits hold 1 non-finite"):
            Objective(OBJECTIVES.get(name))(s.requires_grad_(), t, LABELS)
    reliability.record(AREA, "+inf teacher logit into dkd, ttm, lskd", "NonFiniteSignalError", trials=3)


@pytest.mark.parametrize("where", ["at the label", "elsewhere", "half a row"])
def test_minus_inf_teacher_logits_are_probability_zero_or_refused(where: str, reliability) -> None:
    outcomes = {}
    for name in LOGIT:
        obj = Objective(OBJECTIVES.get(name))
        s, t = _inputs(1)
        if where == "at the label":
            t[1, 3] = -math.inf
        elif where == "elsewhere":
            t[1, 4] = -math.inf
        else:
            t[2, :5] = -math.inf
        outcomes[name] = _outcome(obj, s, t)
        # The objective's own declaration decides: refused exactly when it cannot keep the value and gradient finite.
        want = "finite" if obj.masked_ok or name not in READERS else "refused"
        assert outcomes[name] == want, (name, where)
    refused = sorted(n for n, o in outcomes.items() if o == "refused")
    assert {"dkd", "lskd", "reverse_kl"} <= set(refused)
    reliability.record(
        AREA,
        f"-inf teacher logit {where}, every logit objective ({len(LOGIT)})",
        f"finite loss and gradients; refused by the objectives that declare they cannot ({', '.join(refused)})",
        trials=len(LOGIT),
    )


def test_a_teacher_row_that_is_minus_inf_throughout_is_refused(reliability) -> None:
    for name in READERS:
        s, t = _inputs()
        t[2] = -math.inf
        with pytest.raises(NonFiniteSignalError, match=rf"objective '{name}': 1 rows of teacher logits are -inf"):
            Objective(OBJECTIVES.get(name))(s, t, LABELS)
    reliability.record(AREA, "teacher row all -inf", "NonFiniteSignalError (no distribution)", trials=len(READERS))


def test_every_row_form_stays_finite_with_masked_teacher_ids(reliability) -> None:
    # The chunked token path (causal LMs): a teacher's masked vocabulary ids are probability 0, value and gradient
    # stay finite wherever the objective allows them (the Distiller refuses the rest before any math).
    exercised = 0
    for name in ROW_FUNCTIONS:
        obj = Objective(OBJECTIVES.get(name))
        if not obj.masked_ok:
            continue
        s, t = _inputs(2)
        t[:, 7:] = -math.inf
        s.requires_grad_()
        loss = _row_form(obj, s, t, LABELS)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all(), name
        exercised += 1
    assert exercised >= 8
    reliability.record(AREA, "masked vocabulary ids (-inf) in every row form", "finite loss and grads", exercised)


def test_sparse_teacher_signals_are_guarded_like_dense_ones(reliability) -> None:
    trials = 0
    for name in READERS:
        obj = Objective(OBJECTIVES.get(name))
        s, t = _inputs(3)
        sig = SparseSignal.from_logits(t, 4)
        nan = sig.logprobs.clone()
        nan[0, 1] = math.nan
        with pytest.raises(NonFiniteSignalError, match=rf"objective '{name}': teacher logits hold 1 non-finite"):
            obj(s, SparseSignal(sig.ids, nan, sig.tail, C), LABELS)
        masked = sig.logprobs.clone()
        masked[1, 3] = -math.inf
        want = "finite" if obj.masked_ok else "refused"
        assert _outcome(obj, s, SparseSignal(sig.ids, masked, sig.tail, C)) == want, name
        # k = V: there are no tail ids, so a -inf tail means nothing and is never refused.
        full = SparseSignal.from_logits(t, C)
        assert _outcome(obj, s, SparseSignal(full.ids, full.logprobs, torch.full((N,), -math.inf), C)) == "finite"
        trials += 3
    reliability.record(AREA, "NaN / -inf in top-k log-probs and tail", "refused / probability 0 as dense", trials)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_teachers_are_upcast_and_their_overflow_refused(dtype: torch.dtype, reliability) -> None:
    for name in READERS:
        obj = Objective(OBJECTIVES.get(name))
        s, t = _inputs(4)
        low = t.to(dtype)
        s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
        try:
            want = obj(s1, low.float(), LABELS)
        except ConfigError:
            continue  # needs per-token fields: its row form upcasts through the same rows()
        got = obj(s2, low, LABELS)
        assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-6), name
        got.backward()
        assert torch.isfinite(s2.grad).all(), name
    # A logit beyond fp16's range becomes +inf in the teacher's own output: refused, not trained on.
    t = _inputs()[1].mul(1e5).to(torch.float16)
    with pytest.raises(NonFiniteSignalError, match="non-finite values"):
        Objective(OBJECTIVES.get("kd"))(_inputs()[0], t)
    reliability.record(AREA, f"{dtype} teacher, fp32 student", "upcast to fp32, same loss; overflow refused", 1)


def test_shape_mismatches_are_refused_before_any_math(reliability) -> None:
    trials = 0
    s, t = _inputs()
    for name in READERS:
        obj = Objective(OBJECTIVES.get(name))
        for teacher in (t[:, :7], t[:3], t[:1]):  # fewer classes, fewer rows, and one row that would broadcast
            with pytest.raises(ShapeMismatchError, match=rf"objective '{name}': teacher logits of shape"):
                obj(s, teacher, LABELS)
            trials += 1
    ce = Objective(OBJECTIVES.get("ce"))
    with pytest.raises(ShapeMismatchError, match=r"labels of shape \(3,\) do not fit .*one label per row \(4\)"):
        ce(s, None, LABELS[:3])
    reliability.record(AREA, "teacher/student/label shape mismatch", "ShapeMismatchError naming both shapes", trials)


def test_a_teacher_on_another_device_is_refused(reliability) -> None:
    # Only the meta device exists on a CPU machine; a Distiller moves teacher signals to the student's device itself.
    s, t = _inputs()
    for name in READERS:
        with pytest.raises(ShapeMismatchError, match=r"teacher logits on meta and student logits on cpu"):
            Objective(OBJECTIVES.get(name))(s, t.to("meta"), LABELS)
    reliability.record(AREA, "teacher logits on another device (meta)", "ShapeMismatchError", trials=len(READERS))


def test_empty_batches_are_refused(reliability) -> None:
    for name in LOGIT:
        with pytest.raises(ShapeMismatchError, match=rf"objective '{name}': .* have no rows to compare"):
            Objective(OBJECTIVES.get(name))(torch.zeros(0, C), torch.zeros(0, C), LABELS[:0])
    reliability.record(AREA, "empty batch (0 rows), every logit objective", "ShapeMismatchError", trials=len(LOGIT))


def test_labels_out_of_range_are_refused_naming_value_and_classes(reliability) -> None:
    users = [n for n in LOGIT if Objective(OBJECTIVES.get(n)).needs.labels]
    assert {"ce", "dkd"} <= set(users)
    s, t = _inputs()
    for name in users:
        obj = Objective(OBJECTIVES.get(name))
        for bad in (10, -1, 99):
            y = torch.tensor([0, 3, bad, 9])
            with pytest.raises(ShapeMismatchError, match=rf"objective '{name}': label {bad} is out of range .* 10 "):
                obj(s, t, y)
    # The ignore index is no class: it passes the guard (ce skips the row).
    assert torch.isfinite(Objective(OBJECTIVES.get("ce"))(s, None, torch.tensor([0, -100, 5, 9])))
    reliability.record(AREA, "label >= classes or < 0", "ShapeMismatchError naming value and classes", 3 * len(users))


def test_rows_labelled_minus_100_are_left_out_by_every_label_using_objective(reliability) -> None:
    # Semi-supervised batches mix labelled rows with unlabelled ones (-100): a label-using term must give the value it
    # gives on the labelled rows alone (as cross-entropy's ignore_index does), a finite gradient, and none at all on
    # the unlabelled rows. dkd and pskd once crashed inside torch's one_hot instead.
    users = [n for n in LOGIT if Objective(OBJECTIVES.get(n)).needs.labels]
    s, t = _inputs()
    y = torch.tensor([0, -100, 5, -100])
    kept = torch.tensor([0, 2])
    for name in users:
        obj = Objective(OBJECTIVES.get(name))
        student = s.clone().requires_grad_()
        loss = obj(student, t, y)
        loss.backward()
        alone = obj(s[kept], t[kept], y[kept])
        assert torch.allclose(loss, alone, rtol=1e-6, atol=1e-7), (name, float(loss), float(alone))
        assert torch.isfinite(student.grad).all(), name
        assert torch.count_nonzero(student.grad[[1, 3]]) == 0, (name, "gradient on an unlabelled row")
    assert {"ce", "dkd", "pskd"} <= set(users)
    behaviour = "left out: the value on the labelled rows alone, no gradient on the others"
    reliability.record(AREA, "rows labelled -100 (no target) in a batch", behaviour, trials=len(users))


def test_dkd_and_pskd_on_partly_labelled_rows_match_their_formulas() -> None:
    # Independent formulas on the labelled rows, written from the papers (DKD eq. 7, PS-KD eq. 4).
    s, t = _inputs(1)
    y = torch.tensor([2, -100, 7, 1])
    keep = y != -100
    gt = torch.nn.functional.one_hot(y[keep], C).bool()
    T = 4.0
    ps, pt = (s[keep] / T).softmax(-1), (t[keep] / T).softmax(-1)
    b_s = torch.stack([ps[gt], 1 - ps[gt]], -1)
    b_t = torch.stack([pt[gt], 1 - pt[gt]], -1)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(-1)
    qs = (s[keep] / T).masked_fill(gt, -1e9).softmax(-1)
    qt = (t[keep] / T).masked_fill(gt, -1e9).softmax(-1)
    nckd = torch.where(qt > 0, qt * (qt.log() - qs.log()), torch.zeros_like(qt)).sum(-1)
    want_dkd = (1.0 * tckd + 8.0 * nckd).mean() * T * T
    got_dkd = Objective(OBJECTIVES.get("dkd"))(s, t, y)
    assert torch.allclose(got_dkd, want_dkd, rtol=1e-5), (float(got_dkd), float(want_dkd))
    alpha = 0.8 * 0.5
    target = (1 - alpha) * gt.float() + alpha * t[keep].softmax(-1)
    want_pskd = -(target * s[keep].log_softmax(-1)).sum(-1).mean()
    got_pskd = Objective(OBJECTIVES.get("pskd"))(s, t, y, progress=0.5)
    assert torch.allclose(got_pskd, want_pskd, rtol=1e-6), (float(got_pskd), float(want_pskd))


# -- through a Distiller: the once-per-step guard --------------------------------------------------------------------


class _Fixed(Teacher):
    """A teacher that returns given logits (and a sequence mask)."""

    def __init__(self, logits: torch.Tensor, mask: torch.Tensor | None = None):
        self.logits, self.mask = logits, mask

    def signals(self, batch, needs):
        return TeacherOutput(logits=DenseSignal(self.logits), mask=self.mask)


def test_a_bad_teacher_on_a_later_batch_stops_the_distiller_naming_term_and_teacher(reliability) -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(6, C), nn.Linear(6, C)
    distiller = Distiller(student, teacher, {"ce": 0.5, "kd": 0.5})
    x = torch.randn(N, 6)
    assert torch.isfinite(distiller({"input": x, "label": LABELS}).loss)
    with torch.no_grad():
        teacher.bias[2] = math.inf
    with pytest.raises(NonFiniteSignalError, match=r"objectives.kd: teacher logits from 'teacher' hold 4 non-finite"):
        distiller({"input": x, "label": LABELS})
    reliability.record(AREA, "teacher turns +inf on batch 2 (Distiller)", "NonFiniteSignalError naming the term", 1)


def test_a_non_finite_teacher_feature_is_refused(reliability) -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, C))
    teacher = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, C))
    hint = {"student_layer": "0", "teacher_layer": "0"}
    distiller = Distiller(student, teacher, {"ce": 1.0, "hint": hint})
    x = torch.randn(N, 6)
    distiller.prepare({"input": x, "label": LABELS})  # builds the connector
    assert torch.isfinite(distiller({"input": x, "label": LABELS}).loss)
    with torch.no_grad():
        teacher[0].bias[5] = math.nan
    with pytest.raises(NonFiniteSignalError, match=r"objectives.hint: teacher features '0' from 'teacher' hold 4 non"):
        distiller({"input": x, "label": LABELS})
    reliability.record(AREA, "NaN in a teacher feature (Distiller)", "NonFiniteSignalError naming term and layer", 1)


def test_a_masked_teacher_class_is_refused_only_by_terms_that_cannot_use_it(reliability) -> None:
    torch.manual_seed(0)
    t = torch.randn(N, C)
    t[:, 9] = -math.inf  # a class the teacher never predicts
    x = torch.randn(N, 6)
    ok = Distiller(nn.Linear(6, C), _Fixed(t), {"kd": 1.0, "ttm": 1.0})
    out = ok({"input": x, "label": LABELS})
    out.loss.backward()
    assert torch.isfinite(out.loss)
    refused = Distiller(nn.Linear(6, C), _Fixed(t), {"kd": 1.0, "dkd": 1.0})
    with pytest.raises(NonFiniteSignalError, match=r"objectives.dkd: teacher logits from 'teacher' hold 4 -inf"):
        refused({"input": x, "label": LABELS})
    reliability.record(AREA, "-inf teacher class (Distiller)", "kd, ttm train; dkd refused naming the term", 2)


def _lm_batch(mask: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    ids = torch.randint(1, 30, mask.shape)
    return {"input": ids, "attention_mask": mask, "label": torch.where(mask, ids, -100) if labels is None else labels}


def test_teacher_values_at_padding_are_never_judged(reliability) -> None:
    torch.manual_seed(0)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3]).bool()
    t = torch.randn(2, 6, 30)
    t[1, 4:] = math.nan  # what a teacher put at padding: no term ever reads it
    student = build_model("tiny_gpt", 30, (6,), width=8, layers=1, heads=1)
    distiller = Distiller(student, _Fixed(t, mask), {"forward_kl": 1.0, "dkd": 1.0})
    out = distiller(_lm_batch(mask))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    t[0, 2, 5] = math.inf  # a real token
    with pytest.raises(NonFiniteSignalError, match=r"objectives.forward_kl: teacher logits from 'teacher' hold 1 "):
        distiller(_lm_batch(mask))
    reliability.record(AREA, "NaN teacher logits at padding / +inf at a real token", "ignored / refused", trials=2)


def test_all_masked_sequences_are_an_error_or_exactly_zero_never_nan(reliability) -> None:
    torch.manual_seed(0)
    student = build_model("tiny_gpt", 30, (6,), width=8, layers=1, heads=1)
    teacher = build_model("tiny_gpt", 30, (6,), width=8, layers=1, heads=1)
    distiller = Distiller(student, teacher, {"forward_kl": 0.5, "ce": 0.5})
    full = torch.ones(2, 6, dtype=torch.bool)
    distiller(_lm_batch(full))  # the first batch fixes the shapes
    trials = 0
    for batch in (_lm_batch(full, torch.full((2, 6), -100)), _lm_batch(torch.zeros(2, 6, dtype=torch.bool))):
        with pytest.raises(ShapeMismatchError, match=r"every token of this batch is masked"):
            distiller(batch)
        # With the global batch's token count known (gradient accumulation, several processes), an all-masked
        # micro-batch adds exactly 0: loss 0 and zero gradients, never 0/0.
        student.zero_grad()
        out = distiller(batch, tokens=12.0)
        out.loss.backward()
        assert out.loss.item() == 0.0
        assert all(p.grad is None or not p.grad.any() for p in student.parameters())
        trials += 2
    # A term without a per-token form (TTM) on an all-masked batch: the same refusal, not a NaN mean.
    ttm = Distiller(student, teacher, {"ttm": 1.0})
    ttm(_lm_batch(full))
    with pytest.raises(ShapeMismatchError, match=r"objective 'ttm': .* have no rows to compare"):
        ttm(_lm_batch(full, torch.full((2, 6), -100)))
    behaviour = "ShapeMismatchError; exactly 0 with zero grads given tokens="
    reliability.record(AREA, "all-masked sequences (labels -100 / mask 0)", behaviour, trials)


def test_token_labels_out_of_range_are_caught_in_a_later_batch(reliability) -> None:
    torch.manual_seed(0)
    student = build_model("tiny_gpt", 30, (6,), width=8, layers=1, heads=1)
    distiller = Distiller(student, None, {"ce": 1.0})
    full = torch.ones(2, 6, dtype=torch.bool)
    distiller(_lm_batch(full))
    labels = torch.randint(0, 30, (2, 6))
    labels[1, 5] = 30
    with pytest.raises(ShapeMismatchError, match=r"label 30 is out of range for a model with 30 outputs"):
        distiller(_lm_batch(full, labels))
    reliability.record(AREA, "token label >= vocabulary in batch 2", "ShapeMismatchError naming value and size", 1)


def test_guard_errors_are_kdforge_errors_for_the_cli() -> None:
    # The CLI turns any KdforgeError into one line and exit code 2.
    assert issubclass(NonFiniteSignalError, KdforgeError) and issubclass(ShapeMismatchError, KdforgeError)
