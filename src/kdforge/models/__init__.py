"""Registered model builders; ``build_model`` checks a model's params before building it."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from kdforge.errors import ConfigError
from kdforge.models import cifar, cnn, gpt, hf, mlp, text  # noqa: F401  (fill the registry)
from kdforge.registry import MODELS, did_you_mean

__all__ = ["build_model", "cifar", "cnn", "count_parameters", "mlp", "model_params"]

# Every builder takes these two; the rest of its signature are the tunable params.
_FIXED = ("num_classes", "input_shape")


def model_params(name: str) -> dict[str, Any]:
    """The tunable params of model ``name`` with their defaults."""
    signature = inspect.signature(MODELS.get(name))
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name not in _FIXED and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...], **params: Any) -> nn.Module:
    """Build model ``name``; an unknown name or param raises ConfigError listing the valid ones."""
    builder = MODELS.get(name)
    valid = model_params(name)
    unknown = [key for key in params if key not in valid]
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
        near = did_you_mean(unknown[0], list(valid))
        raise ConfigError(f"model {name!r} has no param {', '.join(map(repr, unknown))}.{near} Valid params: {listing}")
    if int(num_classes) < 1:
        raise ConfigError(f"model {name!r}: num_classes must be >= 1, got {num_classes!r}")
    return builder(int(num_classes), tuple(int(d) for d in input_shape), **params)


def count_parameters(model: nn.Module) -> int:
    """The number of scalar parameters in ``model``, trainable or not."""
    return sum(p.numel() for p in model.parameters())
