"""Feature, relation and cross-architecture KD sections."""

from __future__ import annotations

import json

from kdforge.bench.readme.markdown import pm, table

FEATURE_METHODS = ("scratch", "kd", "fitnet", "at", "rkd", "crd", "ofa")

STUDENT_LABELS = {
    "cnn": "CNN teacher → cnn[16,32,64] (single conv per width)",
    "mlp": "CNN teacher → mlp[256] (cross-architecture)",
}


def _term(objectives: dict) -> str:
    """The method's own term as the recipe writes it (CE left out)."""
    parts = [
        f"`{k}`" + (f" {json.dumps(v, separators=(',', ':'))}" if isinstance(v, dict) else f" {v}")
        for k, v in objectives.items()
        if k != "ce"
    ]
    return ", ".join(parts) or "`ce` only"


def features_section(data: dict) -> list[str]:
    """The Fashion-MNIST feature-KD tables: one per teacher/student pair, methods as rows."""
    lines = ["", "### Feature, relation and cross-architecture KD on Fashion-MNIST (`benchmarks/features.py`)", ""]
    lines.append(
        f"5,400 transfer images, {data['epochs']:g} epochs, seeds 0-2, test accuracy (%) at the last epoch and at "
        "the best validation epoch; the teacher is the demo's CNN. Each feature method is CE 1 plus its term at "
        "mdistiller's CIFAR-100 weight (nothing tuned here); KD is the demo's validation-chosen setting."
    )
    for student, rows in data["tables"].items():
        body = []
        for method in FEATURE_METHODS:
            cell = rows.get(method)
            if cell is None:
                continue
            if cell.get("not_applicable"):
                body.append([method, "n/a", "n/a", "an MLP has no spatial map to attend over"])
                continue
            body.append([method, pm(cell["test_last"]), pm(cell["test_at_best_val"]), _term(cell["objectives"])])
        teacher = next((c["teacher"]["mean"] for c in rows.values() if "teacher" in c), None)
        head = STUDENT_LABELS.get(student, student)
        lines += ["", f"**{head}** (teacher {100 * teacher:.2f}%)" if teacher else f"**{head}**", ""]
        lines += table(["method", "test, last", "test at best val", "term"], body)
        lines += ["", _against_scratch(rows)]
    return lines


def _against_scratch(rows: dict) -> str:
    """Which methods beat scratch by more than both spreads, which fall below it, which tie (last-epoch accuracy)."""
    base = rows["scratch"]["test_last"]
    verdicts: dict[str, list[str]] = {"above": [], "below": [], "tie": []}
    for method, cell in rows.items():
        if method == "scratch" or cell.get("not_applicable"):
            continue
        stat = cell["test_last"]
        gap = 100 * (stat["mean"] - base["mean"])
        margin = 100 * (stat["std"] + base["std"])
        kind = "tie" if abs(gap) <= margin else ("above" if gap > 0 else "below")
        verdicts[kind].append(f"{method} {gap:+.2f}")
    parts = [f"{k} scratch (beyond both stds): {', '.join(v)}" for k, v in verdicts.items() if v and k != "tie"]
    if verdicts["tie"]:
        parts.append(f"within the spread: {', '.join(verdicts['tie'])}")
    return "Against scratch: " + "; ".join(parts) + "."


def features_text_section(data: dict) -> list[str]:
    """MiniLMv2 relations on R8: the student with and without the relation term."""
    lines = ["", "### MiniLMv2 relations on Reuters R8 (`benchmarks/features_text.py`)", ""]
    conditions = data["conditions"]
    teacher = next(iter(conditions.values()))["teacher"]["mean"]
    lines.append(
        f"all-MiniLM-L6-v2 with a linear probe on its frozen embeddings (teacher {100 * teacher:.2f}%) teaches a "
        f"randomly initialised 2-layer BERT (hidden 128, 2 heads) trained with its own head, {data['epochs']:g} "
        f"epochs at {data['max_len']} tokens, {len(next(iter(conditions.values()))['test_last']['values'])} seeds; "
        "relations between the last layers, 8 relation heads on both sides."
    )
    lines.append("")
    rows = [[name, pm(c["test_last"]), pm(c["test_at_best_val"])] for name, c in conditions.items()]
    lines += table(["student objectives", "test, last", "test at best val"], rows)
    if "ce" in conditions and "ce+relations" in conditions:
        a, b = conditions["ce"]["test_last"], conditions["ce+relations"]["test_last"]
        gap, spread = 100 * (b["mean"] - a["mean"]), 100 * (a["std"] + b["std"])
        lines += [
            "",
            f"Relations add {gap:+.2f} points (sum of the two stds {spread:.2f}); both students beat their "
            f"teacher's linear probe ({100 * teacher:.2f}%), a probe on frozen sentence embeddings.",
        ]
    return lines
