"""The reliability diagram of one model: accuracy against mean confidence per confidence bin, as a PNG."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from kdforge.files import atomic_write


def plot_reliability(reliability: dict[str, Any], path: str | Path, title: str) -> Path:
    """Write the bins of ``reliability_bins`` as a bar chart (accuracy per bin, the diagonal = perfect calibration)."""
    # The Agg canvas on a bare Figure: a file only, never a display, and pyplot's global state is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    edges = reliability["edges"]
    lefts, widths = edges[:-1], [b - a for a, b in itertools.pairwise(edges)]
    acc = [a if a is not None else 0.0 for a in reliability["accuracy"]]
    conf = [c if c is not None else 0.0 for c in reliability["confidence"]]
    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.bar(lefts, acc, width=widths, align="edge", edgecolor="black", color="#4c72b0", label="accuracy")
    # The gap between accuracy and mean confidence, hatched whichever side it lies on.
    low = [min(a, c) for a, c in zip(acc, conf, strict=True)]
    gaps = [abs(c - a) for a, c in zip(acc, conf, strict=True)]
    ax.bar(lefts, gaps, bottom=low, width=widths, align="edge", fill=False, hatch="//", edgecolor="#c44e52")
    gap = Patch(fill=False, hatch="//", edgecolor="#c44e52", label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    # A model name holding '$' would be parsed as mathtext (and a lone one raises): escaped, shown as written.
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title.replace("$", r"\$"))
    ax.legend(handles=[*ax.get_legend_handles_labels()[0], gap], loc="upper left", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    # The temporary name ends in .tmp, so the format cannot come from the suffix.
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path
