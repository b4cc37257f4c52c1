"""One model's entry of the evaluation record (`kdforge eval`): metrics, per class, calibration, profile, plots.

The record's layout is docs/evaluation.md's. Rebuilding models from a run folder needs recipes and strategies, a
layer above this package, so ``evaluate_path`` lives in ``kdforge.rerun``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdforge.evaluate.classification_report import classification_record
from kdforge.evaluate.flops import count_flops
from kdforge.evaluate.inputs import torch_runner
from kdforge.evaluate.model_stats import parameter_count, size_on_disk
from kdforge.evaluate.reliability_plot import plot_reliability
from kdforge.evaluate.speed import cycled, full_profile

PLOT_DIR = "eval"
LM_KEYS = ("perplexity", "nll", "accuracy", "agreement", "kl", "tokens")


def file_stem(name: str) -> str:
    """A model name made safe as a file name (variants and recipe names may hold '/', spaces)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def unique_stems(names: Iterable[str]) -> dict[str, str]:
    """Each name's file stem, all distinct: a stem already taken gets -2, -3, ... (``a b`` and ``a_b`` share a_b)."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        base = stem = file_stem(name)
        n = 1
        while stem in taken:
            n += 1
            stem = f"{base}-{n}"
        taken.add(stem)
        out[name] = stem
    return out


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by None, for strict JSON (``allow_nan=False``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def torch_profile(
    model: nn.Module,
    inputs: dict[str, Tensor],
    batch_size: int,
    run: Callable[[dict[str, Tensor]], Any] | None = None,
    size_bytes: int | None = None,
    **timing: Any,
) -> dict[str, Any]:
    """The profile of a PyTorch model on named real inputs; ``run`` (an exported artifact) is timed instead when given.

    FLOPs per sample are counted on a batch-1 forward of ``model`` (an artifact's FLOPs are its source model's).
    """
    model = model.eval()
    forward = torch_runner(model)
    one = cycled(inputs, 1)
    flops = count_flops(lambda: forward(one))
    size = size_on_disk(model) if size_bytes is None else size_bytes
    return full_profile(run or forward, inputs, batch_size, parameter_count(model), size, flops, **timing)


def classification_entry(
    logits: Tensor,
    labels: Tensor,
    teacher_logits: Tensor | None,
    class_names: Sequence[str] | None,
    profile: dict[str, Any],
    name: str,
    json_dir: Path,
    stem: str | None = None,
) -> dict[str, Any]:
    """A classification model's entry, its reliability diagram written under ``json_dir/eval/`` (as ``stem``)."""
    record = classification_record(logits, labels, teacher_logits, class_names)
    relative = f"{PLOT_DIR}/{stem or file_stem(name)}-reliability.png"
    plot_reliability(record["reliability"], json_dir / relative, f"reliability — {name}")
    return {**record, "kl_per_position": None, "profile": profile, "plots": {"reliability": relative}}


def lm_entry(metrics: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
    """A causal LM's entry from ``lm_metrics(..., per_position=True)`` and its profile."""
    return {
        "metrics": {k: metrics.get(k) for k in LM_KEYS},
        "per_class": None,
        "confusion": None,
        "reliability": None,
        "kl_per_position": metrics.get("kl_per_position"),
        "profile": profile,
        "plots": {"reliability": None},
    }


def logits_of(run: Callable[[dict[str, Any]], Tensor], batches: Any) -> tuple[Tensor, Tensor]:
    """(float32 logits, labels) of a runner over labelled batches, e.g. an exported artifact over the test split."""
    logits: list[Tensor] = []
    labels: list[Tensor] = []
    with torch.inference_mode():
        for batch in batches:
            logits.append(torch.as_tensor(run(batch)).float().cpu())
            labels.append(torch.as_tensor(batch["label"]).cpu())
    if not logits:
        raise ValueError("the test split yielded no batches")
    return torch.cat(logits), torch.cat(labels)
