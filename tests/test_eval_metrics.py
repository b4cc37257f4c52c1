"""`kdforge eval`'s metrics: golden values and independent numpy / loop computations of each."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdforge.evaluate.classification_report import classification_record, per_class, reliability_bins, row_kl
from kdforge.evaluate.lm import IGNORE, lm_metrics
from kdforge.evaluate.metrics import (
    brier_score,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
    top_k_accuracy,
)
from kdforge.models import build_model


def _random(n: int = 200, c: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits, labels = 3 * torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)
    return logits, labels, 3 * torch.randn(n, c, generator=g)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_top5_golden_and_null_under_five_classes():
    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1], [6.0, 5, 4, 3, 2, 1], [0.0, 0, 0, 0, 0, 9]])
    # Label 4 is fifth (inside), label 5 sixth (outside), label 5 first.
    assert top_k_accuracy(logits, torch.tensor([4, 5, 5]), 5) == pytest.approx(2 / 3)
    assert top_k_accuracy(torch.zeros(3, 4), torch.tensor([0, 1, 2]), 5) is None


def test_top5_matches_a_loop():
    logits, labels, _ = _random()
    z, y = logits.numpy(), labels.numpy()
    hits = [y[i] in np.argsort(-z[i])[:5] for i in range(len(y))]
    assert top_k_accuracy(logits, labels, 5) == pytest.approx(float(np.mean(hits)), abs=1e-12)


def test_confusion_matrix_matches_a_loop():
    logits, labels, _ = _random()
    cm = confusion_matrix(logits.argmax(-1), labels, 7)
    loop = np.zeros((7, 7), dtype=np.int64)
    for t, p in zip(labels.tolist(), logits.argmax(-1).tolist(), strict=True):
        loop[t, p] += 1
    assert cm.tolist() == loop.tolist() and int(cm.sum()) == 200


def test_macro_f1_golden_excludes_classes_absent_from_labels_and_predictions():
    # 4 classes; class 3 never occurs. Predictions: [0, 0, 1, 2], labels: [0, 1, 1, 1].
    logits = torch.eye(4)[[0, 0, 1, 2]]
    labels = torch.tensor([0, 1, 1, 1])
    # F1: class 0 = 2·1/(2+1+0) = 2/3; class 1 = 2·1/(2+0+2) = 1/2; class 2 (only predicted) = 0; class 3 excluded.
    assert macro_f1(logits, labels) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_macro_f1_matches_sklearn_and_a_loop():
    sklearn = pytest.importorskip("sklearn.metrics")
    logits, labels, _ = _random(c=9)
    labels = labels.clamp(max=6)  # classes 7 and 8 are only ever predicted, never labelled
    pred = logits.argmax(-1).numpy()
    y = labels.numpy()
    expected = sklearn.f1_score(y, pred, average="macro")
    f1s = []
    for c in sorted(set(y) | set(pred)):
        tp = np.sum((pred == c) & (y == c))
        fp, fn = np.sum((pred == c) & (y != c)), np.sum((pred != c) & (y == c))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    assert macro_f1(logits, labels) == pytest.approx(expected, abs=1e-12)
    assert macro_f1(logits, labels) == pytest.approx(float(np.mean(f1s)), abs=1e-12)


def test_brier_golden_and_numpy():
    logits = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64).log()
    # (0.7 - 1)² + 0.2² + 0.1² = 0.14
    assert brier_score(logits, torch.tensor([0])) == pytest.approx(0.14)
    assert brier_score(logits, torch.tensor([2])) == pytest.approx(0.49 + 0.04 + 0.81)
    z, y, _ = _random()
    p = _softmax(z.double().numpy())
    expected = float(np.mean(((p - np.eye(7)[y.numpy()]) ** 2).sum(-1)))
    assert brier_score(z, y) == pytest.approx(expected, abs=1e-12)


def test_per_class_groups_by_true_label_against_a_loop():
    logits, labels, teacher = _random()
    names = [f"c{i}" for i in range(7)]
    rows = per_class(logits, labels, names, teacher)
    s, t = _softmax(logits.double().numpy()), _softmax(teacher.double().numpy())
    kl = (t * (np.log(t) - np.log(s))).sum(-1)
    pred, tpred, y = logits.argmax(-1).numpy(), teacher.argmax(-1).numpy(), labels.numpy()
    for c, entry in enumerate(rows):
        idx = np.flatnonzero(y == c)
        assert entry["class"] == f"c{c}" and entry["support"] == len(idx)
        assert entry["accuracy"] == pytest.approx(float(np.mean(pred[idx] == c)))
        assert entry["agreement"] == pytest.approx(float(np.mean(pred[idx] == tpred[idx])))
        assert entry["kl"] == pytest.approx(float(kl[idx].mean()), rel=1e-9)
    assert row_kl(teacher, logits).numpy() == pytest.approx(kl, rel=1e-9)


def test_per_class_of_an_empty_class_and_without_a_teacher_is_null():
    rows = per_class(torch.eye(3)[[0, 1]], torch.tensor([0, 1]))
    assert rows[2] == {"class": "2", "support": 0, "accuracy": None, "agreement": None, "kl": None}
    assert rows[0]["accuracy"] == 1.0 and rows[0]["agreement"] is None


def test_reliability_bins_golden():
    # Confidences 0.62 (bin 9: (9/15, 10/15]), 0.81 twice (bin 12) and 1.0 (the last bin, closed above).
    probs = torch.tensor([[0.62, 0.38], [0.81, 0.19], [0.19, 0.81], [1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0])
    bins = reliability_bins(probs.clamp(min=1e-300).log(), labels)
    assert len(bins["edges"]) == 16 and bins["edges"][0] == 0.0 and bins["edges"][-1] == 1.0
    assert bins["count"] == [0] * 9 + [1, 0, 0, 2, 0, 1]
    assert bins["confidence"][12] == pytest.approx(0.81) and bins["accuracy"][12] == 0.0
    assert bins["accuracy"][9] == 1.0 and bins["accuracy"][14] == 1.0
    assert bins["confidence"][0] is None and bins["accuracy"][0] is None


def test_reliability_bins_match_a_loop_and_give_the_ece():
    logits, labels, _ = _random(n=500)
    bins = reliability_bins(logits, labels)
    p = _softmax(logits.double().numpy())
    conf, pred = p.max(-1), p.argmax(-1)
    ece = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inside = (conf > lo) & (conf <= hi)
        assert bins["count"][b] == int(inside.sum())
        if inside.any():
            acc = float(np.mean(pred[inside] == labels.numpy()[inside]))
            assert bins["confidence"][b] == pytest.approx(float(conf[inside].mean()), rel=1e-9)
            assert bins["accuracy"][b] == pytest.approx(acc)
            ece += inside.sum() / len(conf) * abs(acc - conf[inside].mean())
    assert expected_calibration_error(logits, labels) == pytest.approx(ece, rel=1e-9)


def test_classification_record_has_every_schema_key():
    logits, labels, teacher = _random()
    record = classification_record(logits, labels, teacher, None)
    assert set(record) == {"metrics", "per_class", "confusion", "reliability"}
    assert set(record["metrics"]) == {"accuracy", "top5", "macro_f1", "nll", "brier", "ece", "agreement", "kl", "n"}
    assert record["metrics"]["n"] == 200 and 0 <= record["metrics"]["agreement"] <= 1
    alone = classification_record(logits, labels)["metrics"]
    assert alone["agreement"] is None and alone["kl"] is None


def test_lm_kl_per_position_matches_full_logits():
    torch.manual_seed(0)
    teacher = build_model("tiny_gpt", 30, (6,), width=16, layers=1, heads=2).eval()
    student = build_model("tiny_gpt", 30, (6,), width=8, layers=1, heads=1).eval()
    ids = torch.randint(0, 30, (5, 6))
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = IGNORE
    labels[0, 3:] = IGNORE  # a short sequence: positions 3, 4 have fewer targets
    labels[1, 0] = IGNORE
    batches = [{"input": ids[:3], "label": labels[:3]}, {"input": ids[3:], "label": labels[3:]}]
    out = lm_metrics(student, batches, teacher=teacher, chunk_size=4, per_position=True)
    with torch.no_grad():
        log_p, log_q = teacher(ids).log_softmax(-1).double(), student(ids).log_softmax(-1).double()
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    mask = labels != IGNORE
    expected = [float(kl[mask[:, s], s].mean()) for s in range(5)]
    assert out["kl_per_position"] == pytest.approx(expected, rel=1e-4)
    assert out["kl"] == pytest.approx(float(kl[mask].mean()), rel=1e-4)
    assert "kl_per_position" not in lm_metrics(student, batches, teacher=teacher)
    assert math.isfinite(out["perplexity"])
