"""Run a model over a loader and collect its logits, labels and sample indices."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from kdforge.adapters import adapter_for
from kdforge.batch import extract_logits


def forward_logits(model: nn.Module, x: Tensor) -> Tensor:
    """Logits of ``model`` on ``x`` under inference mode, the input cast to the model's device and float dtype."""
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(param.device, dtype=param.dtype if x.is_floating_point() else x.dtype)
    with torch.inference_mode():
        return extract_logits(model(x))


def predict(
    model: nn.Module,
    loader: Iterable[Mapping[str, Tensor]],
    device: str | torch.device = "cpu",
    gather: Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]] | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Eval-mode logits (float32, CPU), labels (or None) and indices for every batch of ``loader``.

    ``gather`` (e.g. Accelerate's gather_for_metrics) collects each batch from every process.
    """
    was_training = model.training
    model.eval()
    # Through the model's adapter: a text model gets the batch's attention mask, a Hugging Face model keywords.
    adapter = adapter_for(model)
    param = next(model.parameters(), None)
    logits: list[Tensor] = []
    labels: list[Tensor] = []
    indices: list[Tensor] = []
    try:
        with torch.inference_mode():
            for batch in loader:
                moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                x = moved["input"]
                if param is not None and torch.is_tensor(x) and x.is_floating_point():
                    moved["input"] = x.to(param.dtype)  # a bf16 teacher takes bf16 images
                out = adapter(moved).logits
                parts = [out.float(), torch.as_tensor(batch["index"])]
                if "label" in batch:
                    parts.append(torch.as_tensor(batch["label"]))
                if gather is not None:
                    parts = list(gather(tuple(parts)))
                logits.append(parts[0].cpu())
                indices.append(parts[1].cpu())
                if len(parts) > 2:
                    labels.append(parts[2].cpu())
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("loader yielded no batches")
    # Labels are all-or-nothing: a loader that labels only some batches would misalign them with logits.
    if labels and len(labels) != len(logits):
        raise ValueError(f"only {len(labels)} of {len(logits)} batches carried a 'label'")
    return torch.cat(logits), (torch.cat(labels) if labels else None), torch.cat(indices)
