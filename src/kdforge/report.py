"""Comparison rows and the Markdown report of a run."""

from __future__ import annotations

from typing import Any

from kdforge.recipe import Recipe

COLUMNS = (
    ("name", "run"),
    ("accuracy", "test acc"),
    ("agreement", "agreement"),
    ("kl", "KL(T‖S)"),
    ("ece", "ECE"),
    ("nll", "NLL"),
    ("params", "params"),
    ("size_kb", "size (KB)"),
    ("latency_ms_b1", "ms/sample b1"),
    ("latency_ms_b256", "ms/sample b256"),
)


def row(name: str, test: dict[str, float] | None, profile: dict[str, Any] | None) -> dict[str, Any]:
    """One table row from test metrics and a model profile."""
    test, profile = test or {}, profile or {}
    return {
        "name": name,
        **{k: test.get(k) for k in ("accuracy", "agreement", "kl", "ece", "nll")},
        "params": profile.get("params"),
        "size_kb": round(profile["size_bytes"] / 1024, 1) if "size_bytes" in profile else None,
        "latency_ms_b1": profile.get("latency_ms_b1"),
        "latency_ms_b256": profile.get("latency_ms_b256"),
    }


def comparison_rows(results: dict[str, dict[str, Any]], teacher: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Teacher first (when known), then one row per run."""
    rows = [row("teacher", teacher["test"], teacher["profile"])] if teacher else []
    rows += [row(name, s.get("test"), s.get("profile")) for name, s in results.items()]
    return rows


def fmt(key: str, value: Any) -> str:
    """Human formatting per column."""
    if value is None:
        return "–"
    if key == "accuracy" or key == "agreement":
        return f"{100 * value:.2f}%"
    if key == "params":
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if key in ("kl", "ece", "nll") else f"{value:.4g}"
    return str(value)


def render_markdown(recipe: Recipe, rows: list[dict[str, Any]]) -> str:
    """report.md: what ran and the comparison table."""
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(fmt(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    lines = [
        f"# {recipe.name}",
        "",
        recipe.description or "",
        "",
        f"data: `{recipe.data.name}` {recipe.data.params or ''} · student: `{recipe.student.name}` "
        f"{recipe.student.params or ''} · budget: {recipe.train.epochs} epoch(s), seed {recipe.seed}",
        "",
        head,
        sep,
        *body,
        "",
        "Accuracy, agreement (top-1 with the teacher), KL(teacher‖student), ECE (15 bins) and NLL are on the test "
        "set; latency is CPU time per sample at batch 1 and 256 (median of repeats).",
        "",
    ]
    return "\n".join(lines)
