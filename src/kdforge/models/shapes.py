"""Check that an ``input_shape`` describes an image before a conv model is built for it."""

from __future__ import annotations

from kdforge.errors import ConfigError


def image_channels(model: str, input_shape: tuple[int, ...], min_side: int = 1) -> int:
    """Return C of a (C, H, W) ``input_shape``; anything else raises ConfigError naming ``model``."""
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise ConfigError(f"model {model!r} needs an image input_shape (C, H, W), got {tuple(input_shape)!r}")
    if min(input_shape[1:]) < min_side:
        raise ConfigError(f"model {model!r} needs images at least {min_side}×{min_side}, got {tuple(input_shape)!r}")
    return int(input_shape[0])
