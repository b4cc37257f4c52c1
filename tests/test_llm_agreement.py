"""Agreement of an LLM annotator with gold labels: hand-computed values, sklearn / krippendorff cross-checks, edges."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from kdforge.errors import ConfigError
from kdforge.llm.agreement import agreement, format_report, krippendorff_alpha_nominal, plot_coverage

LABELS = ["a", "b", "c"]
# Rows (gold, predicted, confidence); the last has no gold and must be ignored everywhere.
GOLD = [0, 0, 0, 1, 1, 2, 2, None]
PRED = [0, 0, 1, 1, None, 2, 0, 1]
CONF = [0.9, 0.8, 0.7, 0.95, None, 0.6, 0.5, 0.99]

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers, 12 units, missing values.
TEXTBOOK = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def _units(coders: list[list]) -> list[list]:
    return [list(unit) for unit in zip(*coders, strict=True)]


def _random_rows(seed: int, rows: int = 120, size: int = 4, p_unknown: float = 0.15, p_no_gold: float = 0.1):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, size, rows)
    # Mostly right, so κ and α are far from 0 and a wrong sign would show.
    pred = np.where(rng.random(rows) < 0.7, gold, rng.integers(0, size, rows))
    conf = rng.random(rows)
    unknown = rng.random(rows) < p_unknown
    no_gold = rng.random(rows) < p_no_gold
    gold_l = [None if g else int(v) for v, g in zip(gold, no_gold, strict=True)]
    pred_l = [None if u else int(v) for v, u in zip(pred, unknown, strict=True)]
    conf_l = [None if u else float(c) for c, u in zip(conf, unknown, strict=True)]
    return gold_l, pred_l, conf_l


def test_hand_computed_example():
    r = agreement(GOLD, PRED, CONF, LABELS)
    # 7 gold rows; row 5 (gold b) is unknown, so 6 annotated; correct: rows 1, 2, 4, 6 → 4.
    assert (r["n"], r["annotated"], r["unknown"]) == (7, 6, 1)
    assert r["coverage"] == pytest.approx(6 / 7)
    assert r["accuracy"] == pytest.approx(4 / 7)  # unknown counted as wrong
    assert r["accuracy_annotated"] == pytest.approx(4 / 6)
    assert "wrong" in r["accuracy_note"]
    # Rows gold a, b, c; columns predicted a, b, c, unknown.
    assert r["confusion"] == [[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0]]
    # a: TP 2, support 3, predicted 3 → P = R = F1 = 2/3.
    # b: TP 1, support 2 (one unknown), predicted 2 → P = R = F1 = 1/2.
    # c: TP 1, support 2, predicted 1 → P 1, R 1/2, F1 = 2·1 / (2 + 1) = 2/3.
    expected = {"a": (3, 2 / 3, 2 / 3, 2 / 3), "b": (2, 1 / 2, 1 / 2, 1 / 2), "c": (2, 1.0, 1 / 2, 2 / 3)}
    for name, (support, precision, recall, f1) in expected.items():
        row = r["per_class"][name]
        assert row["support"] == support
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision, recall, f1))
        assert row["agreement"] == row["recall"]
    # macro-F1 = (2/3 + 1/2 + 2/3) / 3 = 11/18.
    assert r["macro_f1"] == pytest.approx(11 / 18)
    # κ: p_o = 4/7; gold marginals 3, 2, 2 and predicted 3, 2, 1 (+1 unknown, no gold mass) →
    # p_e = (3·3 + 2·2 + 2·1) / 49 = 15/49; κ = (28/49 − 15/49) / (34/49) = 13/34.
    assert r["cohen_kappa"] == pytest.approx(13 / 34)
    # α: pairable units (0,0) (0,0) (0,1) (1,1) (2,2) (2,0); (1, None) is missing one value. Coincidences
    # o = [[4,1,1],[1,2,0],[1,0,2]], n_c = 6, 3, 3, n = 12, Σo_cc = 8 →
    # α = 1 − 11·(12 − 8) / (144 − 54) = 1 − 44/90 = 23/45.
    assert r["krippendorff_alpha"] == pytest.approx(23 / 45)
    # Ranked by confidence: 0.95 ✓, 0.9 ✓, 0.8 ✓, 0.7 ✗, 0.6 ✓, 0.5 ✗ (0.99 has no gold; the unknown has no rank).
    curve = [(p["threshold"], p["coverage"], p["accuracy"]) for p in r["coverage_curve"]]
    np.testing.assert_allclose(
        curve,
        [
            (0.95, 1 / 7, 1),
            (0.9, 2 / 7, 1),
            (0.8, 3 / 7, 1),
            (0.7, 4 / 7, 3 / 4),
            (0.6, 5 / 7, 4 / 5),
            (0.5, 6 / 7, 4 / 6),
        ],
    )
    json.dumps(r, allow_nan=False)


def test_textbook_krippendorff_alpha():
    # Krippendorff (2011) reports α = 0.743. Its coincidence totals are n_c = 9, 13, 10, 5, 3 (n = 40) with
    # Σo_cc = 7 + 10 + 8 + 4 + 3 = 32, so α = 1 − 39·(40 − 32) / (1600 − 384) = 1 − 312/1216 = 113/152.
    alpha = krippendorff_alpha_nominal(_units(TEXTBOOK))
    assert alpha == pytest.approx(113 / 152, abs=1e-12)
    assert round(alpha, 3) == 0.743
    # Coder order and the value type do not matter for nominal data.
    assert krippendorff_alpha_nominal(_units(TEXTBOOK[::-1])) == pytest.approx(alpha)
    named = [[None if v is None else "abcde"[v - 1] for v in coder] for coder in TEXTBOOK]
    assert krippendorff_alpha_nominal(_units(named)) == pytest.approx(alpha)


def test_krippendorff_alpha_undefined_and_perfect():
    assert krippendorff_alpha_nominal([]) is None
    assert krippendorff_alpha_nominal([[1, None], [None, 2]]) is None  # nothing pairable
    assert krippendorff_alpha_nominal([[1, 1, 1], [1, 1]]) is None  # one value: no expected disagreement
    assert krippendorff_alpha_nominal([[1, 1], [2, 2], [3, 3, None]]) == pytest.approx(1.0)
    assert krippendorff_alpha_nominal([[1, 1], [2, 2], [float("nan"), 2]]) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_krippendorff_alpha_matches_package(seed: int):
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(seed)
    coders, units = int(rng.integers(2, 6)), int(rng.integers(10, 60))
    data = rng.integers(0, 4, (coders, units)).astype(float)
    data[rng.random(data.shape) < 0.25] = np.nan
    reference = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    coded = [[None if math.isnan(v) else int(v) for v in coder] for coder in data]
    assert krippendorff_alpha_nominal(_units(coded)) == pytest.approx(reference, abs=1e-12)
    assert krippendorff.alpha(
        reliability_data=np.array(TEXTBOOK, dtype=float), level_of_measurement="nominal"
    ) == pytest.approx(krippendorff_alpha_nominal(_units(TEXTBOOK)))


@pytest.mark.parametrize("seed", range(5))
def test_kappa_f1_alpha_match_references(seed: int):
    from sklearn.metrics import cohen_kappa_score, f1_score, precision_recall_fscore_support

    size = 4
    gold, pred, conf = _random_rows(seed, size=size)
    r = agreement(gold, pred, conf, [f"c{i}" for i in range(size)])
    rows = [(g, p) for g, p in zip(gold, pred, strict=True) if g is not None]
    g = [g for g, _ in rows]
    p = [size if p is None else p for _, p in rows]  # unknown: a class of its own that never matches gold
    assert r["cohen_kappa"] == pytest.approx(cohen_kappa_score(g, p), abs=1e-12)
    present = sorted(set(g) | {v for v in p if v != size})
    assert r["macro_f1"] == pytest.approx(f1_score(g, p, labels=present, average="macro", zero_division=0))
    precision, recall, f1, support = precision_recall_fscore_support(g, p, labels=range(size), zero_division=0)
    for i in range(size):
        row = r["per_class"][f"c{i}"]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision[i], recall[i], f1[i]))
        assert row["support"] == support[i]
    assert r["accuracy"] == pytest.approx(np.mean(np.array(g) == np.array(p)))
    krippendorff = pytest.importorskip("krippendorff")
    data = np.array([[v for v, _ in rows], [np.nan if v is None else v for _, v in rows]], dtype=float)
    assert r["krippendorff_alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"), abs=1e-12
    )


def test_coverage_curve_shape():
    gold, pred, conf = _random_rows(7, rows=300)
    r = agreement(gold, pred, conf, ["a", "b", "c", "d"])
    curve = r["coverage_curve"]
    assert len(curve) == 20  # > 20 distinct confidences, so every point is distinct
    coverages = [p["coverage"] for p in curve]
    thresholds = [p["threshold"] for p in curve]
    assert coverages == sorted(coverages) and len(set(coverages)) == len(coverages)
    assert thresholds == sorted(thresholds, reverse=True)
    # The last point keeps every annotated row (here each has a confidence): it is accuracy_annotated at coverage.
    assert curve[-1]["coverage"] == pytest.approx(r["coverage"])
    assert curve[-1]["accuracy"] == pytest.approx(r["accuracy_annotated"])
    # Each point is what "confidence >= threshold" keeps.
    rows = [(c, g == p) for g, p, c in zip(gold, pred, conf, strict=True) if g is not None and p is not None]
    for point in curve:
        kept = [hit for c, hit in rows if c >= point["threshold"]]
        assert point["coverage"] == pytest.approx(len(kept) / r["n"])
        assert point["accuracy"] == pytest.approx(np.mean(kept))
    assert len(agreement(gold, pred, conf, ["a", "b", "c", "d"], points=5)["coverage_curve"]) == 5


def test_coverage_curve_ties_and_missing_confidence():
    # All tied: one threshold keeps every ranked row at once.
    r = agreement([0, 1, 0, 1], [0, 1, 1, None], [0.5, 0.5, 0.5, None], ["a", "b"])
    assert r["coverage_curve"] == [{"threshold": 0.5, "coverage": 0.75, "accuracy": pytest.approx(2 / 3)}]
    # A label without a confidence cannot be ranked: it counts in accuracy_annotated but no threshold keeps it.
    r = agreement([0, 1, 0], [0, 1, 1], [0.9, None, 0.4], ["a", "b"])
    assert r["accuracy_annotated"] == pytest.approx(2 / 3)
    points = [(p["coverage"], p["accuracy"]) for p in r["coverage_curve"]]
    np.testing.assert_allclose(points, [(1 / 3, 1), (2 / 3, 0.5)])
    # A confidence on an unknown is ignored.
    r = agreement([0, 1], [0, None], [0.2, 0.9], ["a", "b"])
    assert r["coverage_curve"] == [{"threshold": 0.2, "coverage": 0.5, "accuracy": 1.0}]


def test_numpy_inputs_and_json():
    # Gold with gaps arrives from numpy/pandas as floats with NaN.
    gold = np.array([0.0, 1.0, np.nan, 2.0, 1.0])
    pred = np.array([0, 1, 1, 1, 1], dtype=np.int64)
    conf = np.array([0.9, 0.8, 0.7, np.nan, 0.6], dtype=np.float32)
    r = agreement(gold, pred, conf, LABELS)
    assert (r["n"], r["annotated"], r["unknown"]) == (4, 4, 0)
    assert r["accuracy"] == pytest.approx(3 / 4)
    # The NaN confidence of the fourth row leaves it out of the curve.
    assert r["coverage_curve"][-1]["coverage"] == pytest.approx(3 / 4)
    text = json.dumps(r, allow_nan=False)
    assert json.loads(text)["confusion"] == [[1, 0, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0]]
    # A class absent from gold and predictions has no F1 and stays out of the macro average.
    assert r["per_class"]["c"]["f1"] == 0.0  # c is in gold (support 1), never predicted
    r = agreement([0, 1], [0, 1], [1.0, 1.0], ["a", "b", "unused"])
    assert r["per_class"]["unused"] == {"support": 0, "precision": None, "recall": None, "f1": None, "agreement": None}
    assert r["macro_f1"] == 1.0


def test_edge_cases():
    for gold, pred in (([], []), ([None, None], [0, 1])):
        r = agreement(gold, pred, [None] * len(gold), LABELS)
        assert r["n"] == 0 and "no row has a gold label" in r["note"]
        assert "no row has a gold label" in format_report(r, LABELS)
    # A single class, perfectly matched: κ and α are undefined (no chance disagreement possible), not NaN.
    r = agreement([0, 0, 0], [0, 0, 0], [0.9, 0.8, 0.7], ["only"])
    assert (r["accuracy"], r["macro_f1"], r["cohen_kappa"], r["krippendorff_alpha"]) == (1.0, 1.0, None, None)
    json.dumps(r, allow_nan=False)
    # Every prediction unknown: nothing annotated, nothing ranked, α has no pair; κ is 0 (no agreement, no chance).
    r = agreement([0, 1, 1], [None] * 3, [None] * 3, ["a", "b"])
    assert (r["annotated"], r["unknown"], r["coverage"], r["accuracy"]) == (0, 3, 0.0, 0.0)
    assert r["accuracy_annotated"] is None and r["krippendorff_alpha"] is None
    assert r["cohen_kappa"] == 0.0 and r["macro_f1"] == 0.0
    assert r["coverage_curve"] == []
    assert r["confusion"] == [[0, 0, 1], [0, 0, 2]]
    json.dumps(r, allow_nan=False)
    assert "n/a" in format_report(r, ["a", "b"])


@pytest.mark.parametrize(
    ("gold", "pred", "conf", "message"),
    [
        ([0, 1, 2], [0, 1], [0.5, 0.5, 0.5], "gold 3, predicted 2, confidence 3"),
        ([0, 1], [0, 1], [0.5], "confidence 1"),
        ([0, 3], [0, 1], [None, None], "gold[1] = 3 is outside the label ids 0..2"),
        ([0, 1], [0, -1], [None, None], "predicted[1] = -1 is outside"),
        ([0, 1.5], [0, 1], [None, None], "gold[1] = 1.5 is not a label id"),
        ([0, True], [0, 1], [None, None], "gold[1] = True is not a label id"),
        ([0, "b"], [0, 1], [None, None], "gold[1] = 'b' is not a label id"),
        ([0, 1], [0, 1], [0.5, "high"], "confidence[1] = 'high' is not a number"),
    ],
)
def test_errors(gold, pred, conf, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        agreement(gold, pred, conf, LABELS)


def test_duplicate_labels_and_points():
    with pytest.raises(ConfigError, match="repeated"):
        agreement([0], [0], [1.0], ["a", "a"])
    with pytest.raises(ConfigError, match="points"):
        agreement([0], [0], [1.0], ["a"], points=0)


def test_plot_coverage(tmp_path: Path):
    pytest.importorskip("matplotlib")
    r = agreement(GOLD, PRED, CONF, LABELS)
    out = plot_coverage(r["coverage_curve"], tmp_path / "plots" / "coverage.png", "teacher vs gold")
    assert out == tmp_path / "plots" / "coverage.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(out.parent) == ["coverage.png"]  # no temporary file left behind
    empty = plot_coverage([], tmp_path / "empty.png", "nothing ranked")
    assert empty.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_coverage_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match="pip install matplotlib"):
        plot_coverage([], tmp_path / "x.png", "x")
    assert not (tmp_path / "x.png").exists()


def test_format_report():
    r = agreement(GOLD, PRED, CONF, LABELS)
    text = format_report(r, LABELS)
    assert "accuracy            0.571" in text
    assert "macro-F1            0.611" in text
    assert "κ           0.382" in text and "α    0.511" in text
    assert "coverage 85.7%" in text
    lines = text.splitlines()
    assert [line.split()[:2] for line in lines[-3:]] == [["a", "3"], ["b", "2"], ["c", "2"]]
    assert lines[-1].split()[2:] == ["1.000", "0.500", "0.667"]
