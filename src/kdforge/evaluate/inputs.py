"""What a student takes (`input`, + `attention_mask` for token ids) and the PyTorch call evaluation and export time.

It lives in ``evaluate`` (below ``export``): evaluation times a student through it, export checks artifacts against it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from kdforge.adapters import adapter_for
from kdforge.batch import extract_logits
from kdforge.data import DataBundle

INPUT, MASK = "input", "attention_mask"


def _is_hf(model: nn.Module) -> bool:
    return type(adapter_for(model)).__name__ == "HFAdapter"


def takes_mask(model: nn.Module) -> bool:
    """Whether the student is called with an attention mask (HF models, and text models whose forward takes one)."""
    if _is_hf(model):
        return True
    try:
        return MASK in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def split_batch(bundle: DataBundle, rows: int) -> dict[str, Any]:
    """The first ``rows`` samples of the test split as one batch (its attention mask included where it has one)."""
    return bundle.test.__getitems__(list(range(min(rows, len(bundle.test)))))


def student_inputs(model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
    """The named inputs of ``model`` for ``batch``, giving exactly the outputs training and evaluation saw."""
    x = torch.as_tensor(batch["input"])
    if x.is_floating_point() or not takes_mask(model):
        return {INPUT: x.float() if x.is_floating_point() else x}
    mask = batch.get(MASK)
    if mask is None:
        # Built-in WordPiece data carries no mask. kdforge's text models then use "not pad id 0", and an HF model
        # called without a mask attends to every position; this explicit mask reproduces what each one did.
        mask = torch.ones_like(x) if _is_hf(model) else x != 0
    return {INPUT: x, MASK: torch.as_tensor(mask).long()}


class ExportModule(nn.Module):
    """The student behind one signature, ``forward(input, attention_mask=None) -> logits``, for export and timing."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student
        self.hf = _is_hf(student)

    def forward(self, input: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits of the student for ``input`` (and its mask)."""
        if self.hf:
            return extract_logits(self.student(input_ids=input, attention_mask=attention_mask))
        if attention_mask is None:
            return extract_logits(self.student(input))
        return extract_logits(self.student(input, attention_mask=attention_mask))


def torch_runner(model: nn.Module) -> Callable[[dict[str, Tensor]], Tensor]:
    """A function from named inputs to the PyTorch student's logits (eval mode, inference mode)."""
    module = ExportModule(model).eval()

    def run(inputs: dict[str, Tensor]) -> Tensor:
        with torch.inference_mode():
            return module(**inputs)

    return run


def torch_outputs(model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    """The PyTorch student's float32 logits for ``inputs``."""
    return torch_runner(model)(inputs).float()
