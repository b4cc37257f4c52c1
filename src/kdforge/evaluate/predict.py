"""Run a model over a loader and collect its logits, labels and sample indices."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn


def _logits_of(output: Any) -> Tensor:
    """The logits tensor from a model output: a tensor, or an object with a ``logits`` attribute."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(f"model returned {type(output).__name__}; expected a Tensor or an object with .logits")


def predict(
    model: nn.Module,
    loader: Iterable[Mapping[str, Tensor]],
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Eval-mode logits (float32, CPU), labels (or None) and indices for every batch of ``loader``."""
    was_training = model.training
    model.eval()
    logits: list[Tensor] = []
    labels: list[Tensor] = []
    indices: list[Tensor] = []
    try:
        with torch.inference_mode():
            for batch in loader:
                out = _logits_of(model(batch["input"].to(device)))
                logits.append(out.float().cpu())
                indices.append(torch.as_tensor(batch["index"]).cpu())
                if "label" in batch:
                    labels.append(torch.as_tensor(batch["label"]).cpu())
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("loader yielded no batches")
    # Labels are all-or-nothing: a loader that labels only some batches would misalign them with logits.
    if labels and len(labels) != len(logits):
        raise ValueError(f"only {len(labels)} of {len(logits)} batches carried a 'label'")
    return torch.cat(logits), (torch.cat(labels) if labels else None), torch.cat(indices)
