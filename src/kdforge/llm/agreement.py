"""How well an LLM annotator agrees with gold labels, where some exist: accuracy, macro-F1, κ, α, a coverage curve.

Only rows with a gold label are compared (``n``). A prediction of ``None`` is *unknown*: the annotator gave no usable
label. Every measure over all ``n`` rows counts an unknown as wrong (accuracy, macro-F1, Cohen's κ, where unknown is a
category of its own that never matches gold); ``accuracy_annotated`` leaves unknown rows out, and Krippendorff's α
treats an unknown as a missing value, which is what α was built for. A measure that is undefined on the data (κ when
gold and predictions are one and the same class, α with fewer than two distinct values, a precision with nothing
predicted) is ``None``, never NaN, so the report stays valid JSON.

Everything is computed from one confusion matrix (gold rows × predicted columns plus an ``unknown`` column) rather than
by several sklearn calls, so that each number has one definition, undefined values come back as ``None`` without
warnings, and nothing heavy is imported; the tests check κ and macro-F1 against ``sklearn.metrics``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdforge.errors import ConfigError
from kdforge.files import atomic_write

CURVE_POINTS = 20
ACCURACY_NOTE = "accuracy counts an unknown prediction as wrong; accuracy_annotated leaves unknown rows out"


def _missing(value: Any) -> bool:
    # NaN stands in for None in float arrays (pandas, numpy), where None cannot be stored.
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _label_ids(values: Sequence[Any], size: int, what: str) -> list[int | None]:
    out: list[int | None] = []
    for row, value in enumerate(values):
        if _missing(value):
            out.append(None)
            continue
        # bool is an int subclass; True as a label id is almost certainly a mix-up of columns. A float is accepted
        # when integral, because a label column with gaps arrives from numpy/pandas as floats with NaN.
        integral = isinstance(value, int | np.integer) or (
            isinstance(value, float | np.floating) and float(value).is_integer()
        )
        if isinstance(value, bool | np.bool_) or not integral:
            raise ConfigError(f"{what}[{row}] = {value!r} is not a label id (an integer in 0..{size - 1} or None)")
        label = int(value)
        if not 0 <= label < size:
            raise ConfigError(f"{what}[{row}] = {label} is outside the label ids 0..{size - 1} ({size} labels)")
        out.append(label)
    return out


def _confidences(values: Sequence[Any]) -> list[float | None]:
    out: list[float | None] = []
    for row, value in enumerate(values):
        if _missing(value):
            out.append(None)
            continue
        try:
            out.append(float(value))
        except (TypeError, ValueError):
            raise ConfigError(f"confidence[{row}] = {value!r} is not a number or None") from None
    return out


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def krippendorff_alpha_nominal(units: list[list[Hashable | None]]) -> float | None:
    """Krippendorff's α for nominal data: ``units[u]`` holds the values the coders gave unit u, None where missing.

    Built from the coincidence matrix o (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"): a unit with
    m ≥ 2 values adds n_c·(n_k − [c = k]) / (m − 1) to o[c, k]; then α = 1 − (n − 1)·(n − Σ_c o[c, c]) / (n² − Σ_c n_c²)
    with n_c the row sums of o and n their total. Units with fewer than two values are not pairable and add nothing.
    Returns None where α is undefined: no pairable unit, or a single value used throughout (no expected disagreement).
    """
    index: dict[Hashable, int] = {}
    pairable_units: list[Counter[int]] = []
    for unit in units:
        values = [v for v in unit if not _missing(v)]
        if len(values) >= 2:
            pairable_units.append(Counter(index.setdefault(v, len(index)) for v in values))
    coincidences = np.zeros((len(index), len(index)))
    for counts in pairable_units:
        m = sum(counts.values())
        for c, n_c in counts.items():
            for k, n_k in counts.items():
                coincidences[c, k] += n_c * (n_k - (c == k)) / (m - 1)
    totals = coincidences.sum(axis=1)
    n = float(totals.sum())
    expected = n * n - float((totals**2).sum())
    # The tolerance absorbs the float noise of the 1/(m − 1) weights when every value is the same.
    if n < 2 or expected <= 1e-9 * n * n:
        return None
    return float(1.0 - (n - 1.0) * (n - float(np.trace(coincidences))) / expected)


def _coverage_curve(
    gold: list[int], predicted: list[int | None], confidence: list[float | None], points: int
) -> list[dict[str, float]]:
    # An unknown (or a label without a confidence) cannot be ranked, so no threshold keeps it; it still counts in the
    # denominator of coverage (all gold rows), so the curve ends at the annotator's real coverage, not at 1.
    ranked = sorted(
        (
            (conf, pred == g)
            for g, pred, conf in zip(gold, predicted, confidence, strict=True)
            if pred is not None and conf is not None
        ),
        key=lambda row: -row[0],
    )
    m = len(ranked)
    hits = np.cumsum([hit for _, hit in ranked])
    curve: list[dict[str, float]] = []
    for i in range(1, points + 1):
        target = -(-i * m // points)  # ceil(i·m / points) in integers: the last point is exactly the full set
        if target == 0:
            continue
        threshold = ranked[target - 1][0]
        # "confidence >= threshold" also keeps the rows tied with the target row, so the count may pass the target.
        kept = target
        while kept < m and ranked[kept][0] >= threshold:
            kept += 1
        if curve and curve[-1]["threshold"] == threshold:
            continue
        curve.append({"threshold": threshold, "coverage": kept / len(gold), "accuracy": float(hits[kept - 1]) / kept})
    return curve


def agreement(
    gold: Sequence[int | None],
    predicted: Sequence[int | None],
    confidence: Sequence[float | None],
    labels: list[str],
    *,
    points: int = CURVE_POINTS,
) -> dict[str, Any]:
    """The agreement report (a JSON-serialisable dict) of predicted labels against gold, over rows that have gold.

    Label ids index ``labels``; None (or NaN) is a missing gold label or an unknown prediction. Keys: ``n`` (rows with
    gold), ``annotated`` (of those, with a predicted label), ``unknown``, ``coverage`` = annotated / n; ``accuracy``
    over all n rows with an unknown counted as wrong (see ``accuracy_note``), ``accuracy_annotated`` over annotated rows
    only; ``macro_f1``, the mean F1 over the classes present in gold or predictions (a class absent from both has no
    defined F1 and is left out, like sklearn's ``f1_score(labels=present, average="macro", zero_division=0)``), with
    an unknown a false negative of its gold class and a false positive of none; ``cohen_kappa`` with unknown as a
    category of its own; ``krippendorff_alpha`` (nominal, gold and annotator as two coders, unknown = missing);
    ``confusion`` (rows gold, columns predicted, last column unknown); ``per_class`` by label name (support, precision,
    recall, f1, agreement = recall); ``coverage_curve``: for ``points`` evenly spaced shares of the rows that have a
    confidence, kept by descending confidence, {threshold, coverage, accuracy} where coverage = kept / n and accuracy
    is over the kept rows (its last point is every ranked row: equal to accuracy_annotated when every annotated row has
    a confidence). Undefined values are None. With no gold row the report is ``{"n": 0, "note": ...}``.
    """
    labels = [str(name) for name in labels]
    if len(set(labels)) != len(labels):
        duplicated = sorted(name for name, count in Counter(labels).items() if count > 1)
        raise ConfigError(f"label names must be unique; repeated: {duplicated}")
    if points < 1:
        raise ConfigError(f"points must be at least 1, got {points}")
    lengths = {"gold": len(gold), "predicted": len(predicted), "confidence": len(confidence)}
    if len(set(lengths.values())) > 1:
        raise ConfigError(
            "gold, predicted and confidence must have one entry per row; got "
            + ", ".join(f"{name} {length}" for name, length in lengths.items())
        )
    size = len(labels)
    gold_ids = _label_ids(gold, size, "gold")
    pred_ids = _label_ids(predicted, size, "predicted")
    conf = _confidences(confidence)

    rows = [(g, p, c) for g, p, c in zip(gold_ids, pred_ids, conf, strict=True) if g is not None]
    n = len(rows)
    if n == 0:
        return {"n": 0, "note": "no row has a gold label, so there is nothing to compare the annotator with"}
    g_rows = [g for g, _, _ in rows]
    p_rows = [p for _, p, _ in rows]
    c_rows = [c for _, _, c in rows]

    unknown_col = size
    confusion = np.zeros((size, size + 1), dtype=np.int64)
    np.add.at(confusion, (g_rows, [unknown_col if p is None else p for p in p_rows]), 1)
    support = confusion.sum(axis=1)
    predicted_count = confusion[:, :size].sum(axis=0)
    true_pos = np.diag(confusion[:, :size])
    correct = int(true_pos.sum())
    unknown = int(confusion[:, unknown_col].sum())
    annotated = n - unknown

    per_class: dict[str, dict[str, Any]] = {}
    f1s: list[float] = []
    for c, name in enumerate(labels):
        recall = _ratio(true_pos[c], support[c])
        # 2·TP / (2·TP + FP + FN) = 2·TP / (support + predicted): defined whenever the class occurs at all, even
        # where precision or recall alone is not; a class absent from gold and predictions has no F1.
        f1 = _ratio(2 * true_pos[c], support[c] + predicted_count[c])
        if f1 is not None:
            f1s.append(f1)
        per_class[name] = {
            "support": int(support[c]),
            "precision": _ratio(true_pos[c], predicted_count[c]),
            "recall": recall,
            "f1": f1,
            "agreement": recall,
        }

    # Cohen's κ over all n rows: the unknown column has no gold mass, so it adds nothing to chance agreement.
    observed = correct / n
    chance = float((support * confusion.sum(axis=0)[:size]).sum()) / (n * n)
    kappa = None if 1.0 - chance <= 1e-12 else (observed - chance) / (1.0 - chance)

    return {
        "labels": labels,
        "n": n,
        "annotated": annotated,
        "unknown": unknown,
        "coverage": annotated / n,
        "accuracy": observed,
        "accuracy_note": ACCURACY_NOTE,
        "accuracy_annotated": _ratio(correct, annotated),
        "macro_f1": float(np.mean(f1s)),
        "cohen_kappa": kappa,
        "krippendorff_alpha": krippendorff_alpha_nominal([[g, p] for g, p in zip(g_rows, p_rows, strict=True)]),
        "confusion": confusion.tolist(),
        "per_class": per_class,
        "coverage_curve": _coverage_curve(g_rows, p_rows, c_rows, points),
    }


def plot_coverage(curve: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Draw accuracy against coverage as a PNG at ``path`` (written atomically) and return the path."""
    try:
        # Agg through the object interface, not pyplot: no window, no change to the caller's backend (a notebook
        # keeps its own), and no figure left in pyplot's registry after the function returns.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ConfigError(f"plotting the coverage curve needs matplotlib ({err}): pip install matplotlib") from None
    path = Path(path)
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if curve:
        ax.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], marker="o", markersize=3)
    else:
        ax.text(0.5, 0.5, "no ranked predictions", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlim=(0.0, 1.0), ylim=(0.0, 1.02))
    ax.set(xlabel="coverage (share of gold rows kept)", ylabel="accuracy of kept rows")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    # The temporary name ends in .tmp, so the format cannot come from the suffix.
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1%}" if percent else f"{value:.3f}"


def format_report(report: dict[str, Any], labels: list[str]) -> str:
    """A short plain-text summary of an ``agreement`` report for the CLI: headline measures, then one line per class."""
    if not report.get("n"):
        return f"agreement: {report.get('note', 'no row has a gold label')}"
    lines = [
        f"gold rows           {report['n']}",
        f"annotated           {report['annotated']} (coverage {_fmt(report['coverage'], True)}), "
        f"unknown {report['unknown']}",
        f"accuracy            {_fmt(report['accuracy'])}  (unknown = wrong)",
        f"accuracy annotated  {_fmt(report['accuracy_annotated'])}",
        f"macro-F1            {_fmt(report['macro_f1'])}",
        f"Cohen's κ           {_fmt(report['cohen_kappa'])}",
        f"Krippendorff's α    {_fmt(report['krippendorff_alpha'])}",
    ]
    width = max([len("label"), *(len(name) for name in labels)])
    lines.append(f"{'label':<{width}}  {'support':>7}  {'precision':>9}  {'recall':>6}  {'f1':>5}")
    for name in labels:
        row = report["per_class"].get(name)
        if row is None:
            lines.append(f"{name:<{width}}  {'n/a':>7}")
            continue
        lines.append(
            f"{name:<{width}}  {row['support']:>7}  {_fmt(row['precision']):>9}  {_fmt(row['recall']):>6}  "
            f"{_fmt(row['f1']):>5}"
        )
    return "\n".join(lines)
