"""Batched image augmentations, vectorised over the batch and driven by torch's global RNG."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.errors import ConfigError

CROP_PAD = 2


def identity(x: Tensor) -> Tensor:
    """Return the batch unchanged."""
    return x


def flip_crop(x: Tensor, pad: int = CROP_PAD) -> Tensor:
    """Random horizontal flip and random crop from a ``pad``-pixel zero-padded image, per sample."""
    n, _, h, w = x.shape
    flip = torch.rand(n) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,))
    dx = torch.randint(0, 2 * pad + 1, (n,))
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    batch = torch.arange(n)[:, None, None]
    # Advanced indices split by the channel slice put the index dims first: (N, H, W, C).
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


AUGMENTS: dict[str, Callable[[Tensor], Tensor]] = {"none": identity, "flip_crop": flip_crop}
# Augmentations that need (N, C, H, W) images.
IMAGE_ONLY = {"flip_crop"}


def get_augment(name: str, input_dim: int | None = None) -> Callable[[Tensor], Tensor]:
    """Look an augmentation up; an unknown name (or one that needs images) raises ConfigError."""
    if name not in AUGMENTS:
        raise ConfigError(f"unknown data.augment {name!r}; valid augmentations: {', '.join(AUGMENTS)}")
    if name in IMAGE_ONLY and input_dim is not None and input_dim != 4:
        raise ConfigError(f"data.augment {name!r} needs image inputs of shape (N, C, H, W), got {input_dim} dims")
    return AUGMENTS[name]
