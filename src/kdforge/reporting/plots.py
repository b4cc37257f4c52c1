"""The report's figures, drawn with matplotlib on the Agg canvas and returned as PNG bytes (no display, no pyplot)."""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from typing import Any

from kdforge.reporting.measures import normalise_rows, pareto_front

Series = dict[str, tuple[list[float], list[float]]]  # line label -> (x, y)
DPI = 100


def plain(text: str) -> str:
    """``text`` shown as it is: a '$' escaped, so a name like ``a$x$`` is not read as matplotlib mathtext."""
    return str(text).replace("$", r"\$")


def _figure(width: float, height: float) -> Any:
    # A bare Figure with its own Agg canvas: pyplot's global state (and any display) is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _grid(fig: Any, count: int, columns: int) -> list[Any]:
    rows = math.ceil(count / columns)
    axes = fig.subplots(rows, columns, squeeze=False).ravel().tolist()
    for ax in axes[count:]:
        ax.set_visible(False)
    return axes[:count]


def learning_curves(panels: dict[str, Series], columns: int = 3) -> bytes:
    """One panel per logged quantity (loss, each term, lr, each split's metrics), one line per student."""
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    fig = _figure(4.2 * columns, 3.0 * rows)
    # Fixed margins in inches instead of tight_layout, which draws this (large) figure a second time.
    width, height = 4.2 * columns, 3.0 * rows
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.15 / width, bottom=0.55 / height, top=1 - 0.35 / height,
                        wspace=0.35, hspace=0.55)  # fmt: skip
    for ax, (title, series) in zip(_grid(fig, len(panels), columns), panels.items(), strict=True):
        for label, (x, y) in series.items():
            ax.plot(x, y, marker="o" if len(x) < 12 else None, markersize=3, label=plain(label))
        ax.set_title(plain(title), fontsize="medium")
        ax.set_xlabel("optimizer step", fontsize="small")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize="small")
        ax.legend(fontsize="x-small")  # even for one line: a term only one student has says whose it is
    return _png(fig)


def reliability_diagrams(models: dict[str, dict[str, Any]], columns: int = 3) -> bytes:
    """Accuracy against confidence per bin, one panel per model (bins: the record's edges, counts, means)."""
    columns = max(1, min(columns, len(models)))
    fig = _figure(3.6 * columns, 3.6 * math.ceil(len(models) / columns))
    for ax, (name, rel) in zip(_grid(fig, len(models), columns), models.items(), strict=True):
        edges = rel["edges"]
        lefts = edges[:-1]
        widths = [b - a for a, b in itertools.pairwise(edges)]
        acc = [0.0 if a is None else a for a in rel["accuracy"]]
        conf = [0.0 if c is None else c for c in rel["confidence"]]
        gaps = [c - a for a, c in zip(acc, conf, strict=True)]
        ax.bar(lefts, acc, width=widths, align="edge", edgecolor="black", color="#4c72b0", label="accuracy")
        # The gap as a hatched outline, not a translucent fill: over the accuracy bar (under-confidence) a fill
        # would blend into it and read as part of it.
        ax.bar(lefts, gaps, bottom=acc, width=widths, align="edge", fill=False, hatch="///", edgecolor="#c44e52",
               linewidth=0.8, label="gap to confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
        ax.set_title(plain(name), fontsize="medium")
        ax.legend(loc="upper left", fontsize="x-small")
    fig.tight_layout()
    return _png(fig)


def pareto_plot(
    points: Sequence[tuple[str, float, float]], xlabel: str, ylabel: str, higher_is_better: bool = True
) -> bytes:
    """Models as (label, cost, score) points; the Pareto frontier joined by a step line and its points ringed."""
    fig = _figure(6.0, 4.2)
    ax = fig.subplots()
    costs = [p[1] for p in points]
    front = pareto_front([(p[1], p[2]) for p in points], higher_is_better)
    ax.scatter(costs, [p[2] for p in points], color="#4c72b0", zorder=3)
    for label, x, y in points:
        ax.annotate(plain(label), (x, y), textcoords="offset points", xytext=(5, 4), fontsize="small")
    fx, fy = [points[i][1] for i in front], [points[i][2] for i in front]
    ax.plot(fx, fy, drawstyle="steps-post", color="#c44e52", label="Pareto frontier", zorder=2)
    ax.scatter(fx, fy, s=120, facecolors="none", edgecolors="#c44e52", zorder=4)
    if min(costs) > 0 and max(costs) / min(costs) > 20:  # models a hundred times apart stay readable
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.margins(0.15)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _png(fig)


def confusion_matrices(models: dict[str, Sequence[Sequence[int]]], class_names: Sequence[str]) -> bytes:
    """Confusion matrices normalised per true class (rows sum to 1), one panel per model, class names on both axes."""
    n = len(class_names)
    columns = max(1, min(3, len(models)))
    side = max(3.6, 0.32 * n + 1.6)
    fig = _figure(side * columns, side * math.ceil(len(models) / columns))
    for ax, (name, matrix) in zip(_grid(fig, len(models), columns), models.items(), strict=True):
        shares = normalise_rows(matrix)
        image = ax.imshow(shares, vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(n), labels=[plain(c) for c in class_names], rotation=90, fontsize="x-small")
        ax.set_yticks(range(n), labels=[plain(c) for c in class_names], fontsize="x-small")
        ax.set(xlabel="predicted", ylabel="true class")
        ax.set_title(plain(name), fontsize="medium")
        if n <= 12:
            for i, row in enumerate(shares):
                for j, v in enumerate(row):
                    if v >= 0.005:
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if v > 0.5 else "black")  # fmt: skip
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _png(fig)


def kl_per_position(series: dict[str, list[float]]) -> bytes:
    """KL(teacher‖student) per token position, one line per student."""
    fig = _figure(6.0, 3.6)
    ax = fig.subplots()
    for label, values in series.items():
        ax.plot(range(1, len(values) + 1), values, label=plain(label))
    ax.set(xlabel="token position", ylabel="KL(T‖S) per token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _png(fig)


def teaching_rounds(rounds: Sequence[dict[str, Any]], label: str) -> bytes:
    """Per-round dev and test accuracy (left) and the examples the teacher added after each round (right)."""
    fig = _figure(9.0, 3.6)
    left, right = fig.subplots(1, 2)
    numbers = [int(r["round"]) for r in rounds]
    left.plot(numbers, [r.get("dev") for r in rounds], marker="o", label="dev (selection metric)")
    test = [(r.get("test") or {}).get("accuracy") for r in rounds]
    left.plot(numbers, [math.nan if t is None else t for t in test], marker="s", label="test accuracy")
    left.set(xlabel="round", ylabel="score", title=f"{plain(label)}: per round")
    left.set_xticks(numbers)
    left.grid(alpha=0.3)
    left.legend(fontsize="small")
    right.bar(numbers, [r.get("added") or 0 for r in rounds], color="#55a868")
    right.set(xlabel="round", ylabel="examples added", title="added by the teacher")
    right.set_xticks(numbers)
    fig.tight_layout()
    return _png(fig)
