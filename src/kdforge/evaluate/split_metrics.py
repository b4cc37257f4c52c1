"""Metrics of a model on one evaluation split (the test set), optionally against a teacher network."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from kdforge.errors import ConfigError
from kdforge.evaluate.metrics import classification_metrics
from kdforge.evaluate.predict import predict


def _device(model: nn.Module) -> torch.device | str:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else "cpu"


def test_metrics(
    model: nn.Module, loader: Iterable[Mapping[str, Tensor]], teacher_model: nn.Module | None = None
) -> dict[str, float]:
    """Classification metrics of ``model`` over ``loader`` (agreement and KL too when ``teacher_model`` is given)."""
    logits, labels, _ = predict(model, loader, _device(model))
    if labels is None:
        raise ConfigError("test metrics: the evaluation batches carry no 'label'; expected a labelled split")
    t_logits = None
    if teacher_model is not None:
        t_logits, _, _ = predict(teacher_model, loader, _device(teacher_model))
    return classification_metrics(logits, labels, t_logits)


# The name starts with "test_"; without this, pytest would collect it from any test module that imports it.
test_metrics.__test__ = False  # type: ignore[attr-defined]
