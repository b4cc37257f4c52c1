"""Batches are dicts: ``input`` (required), ``label`` and ``index`` (optional)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from kdforge.errors import ConfigError


def as_batch(batch: Any) -> dict[str, Any]:
    """Accept a dict batch or an ``(inputs, labels)`` pair and return the dict form."""
    if isinstance(batch, Mapping):
        if "input" not in batch:
            raise ConfigError(f"a batch dict needs the key 'input'; got keys {sorted(batch)}")
        return dict(batch)
    if isinstance(batch, Tensor):
        return {"input": batch}
    if isinstance(batch, Sequence) and 1 <= len(batch) <= 2:
        out = {"input": batch[0]}
        if len(batch) == 2:
            out["label"] = batch[1]
        return out
    raise ConfigError(f"a batch must be a dict with 'input', a tensor, or (inputs, labels); got {type(batch).__name__}")


def extract_logits(output: Any) -> Tensor:
    """Logits from a plain tensor, a Hugging Face ModelOutput, or a tuple whose first item is the logits."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ConfigError(f"cannot find logits in a model output of type {type(output).__name__}")
