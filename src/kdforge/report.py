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

# Causal LMs: held-out perplexity first; accuracy is next-token top-1, agreement and KL are per token.
LM_COLUMNS = (
    ("name", "run"),
    ("perplexity", "perplexity"),
    ("nll", "NLL/token"),
    ("accuracy", "token acc"),
    ("agreement", "agreement"),
    ("kl", "KL(T‖S)/token"),
    ("params", "params"),
    ("size_kb", "size (KB)"),
    ("latency_ms_b1", "ms/sequence b1"),
    ("latency_ms_b8", "ms/sequence b8"),
)


def row(name: str, test: dict[str, float] | None, profile: dict[str, Any] | None) -> dict[str, Any]:
    """One table row from test metrics and a model profile."""
    test, profile = test or {}, profile or {}
    return {
        "name": name,
        **{k: test.get(k) for k in ("accuracy", "agreement", "kl", "ece", "nll", "perplexity")},
        "params": profile.get("params"),
        "size_kb": round(profile["size_bytes"] / 1024, 1) if "size_bytes" in profile else None,
        **{k: v for k, v in profile.items() if k.startswith("latency_ms_")},
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
        if key == "perplexity":
            return f"{value:.2f}"
        return f"{value:.4f}" if key in ("kl", "ece", "nll") else f"{value:.4g}"
    return str(value)


def columns(rows: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    """The table's columns: a causal LM's when the rows report perplexity."""
    return LM_COLUMNS if any(r.get("perplexity") is not None for r in rows) else COLUMNS


def render_samples(samples: dict[str, list[dict[str, str]]]) -> list[str]:
    """Greedy continuations of fixed prompts, per run (student, and teacher where known)."""
    lines = ["## Greedy samples", ""]
    for run, items in samples.items():
        for item in items:
            lines.append(f"- **{run}** · prompt: `{_one_line(item['prompt'])}`")
            lines.append(f"  - student: `{_one_line(item['student'])}`")
            if item.get("teacher") is not None:
                lines.append(f"  - teacher: `{_one_line(item['teacher'])}`")
    return [*lines, ""]


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).replace("`", "'")


def render_markdown(
    recipe: Recipe, rows: list[dict[str, Any]], samples: dict[str, list[dict[str, str]]] | None = None
) -> str:
    """report.md: what ran, the comparison table, and (causal LMs) greedy samples."""
    cols = columns(rows)
    head = "| " + " | ".join(title for _, title in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(fmt(k, r.get(k)) for k, _ in cols) + " |" for r in rows]
    lm = cols is LM_COLUMNS
    note = (
        "Perplexity, NLL, next-token accuracy, top-1 agreement with the teacher and KL(teacher‖student) are per "
        "target token of the test set; latency is CPU time per sequence at batch 1 and 8 (median of repeats)."
        if lm
        else "Accuracy, agreement (top-1 with the teacher), KL(teacher‖student), ECE (15 bins) and NLL are on the "
        "test set; latency is CPU time per sample at batch 1 and 256 (median of repeats)."
    )
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
        note,
        "",
        *(render_samples(samples) if samples else []),
    ]
    return "\n".join(lines)
