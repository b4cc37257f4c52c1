"""Batched image augmentations whose randomness is a pure function of (seed, view, sample id).

Keying every draw on the sample and its view, not on a global RNG, makes an augmented view reproducible anywhere:
in another process, in another batch, or in `kdforge cache`, which stores the teacher's signal for view v of
sample i and must hand the student exactly that image again.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.errors import ConfigError

CROP_PAD = 2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective, well-mixed hash of uint64 values (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def sample_keys(seed: int, views: Tensor, ids: Tensor) -> np.ndarray:
    """One uint64 key per sample from the augmentation seed, its view number and its sample id."""
    seed_key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    view = views.to(torch.int64).numpy().astype(np.uint64)
    sample = ids.to(torch.int64).numpy().astype(np.uint64)
    return _splitmix64(_splitmix64(seed_key ^ view) ^ sample)


def draw(keys: np.ndarray, salt: int, high: int) -> Tensor:
    """Per-sample integers in [0, high), independent across salts (one salt per random decision)."""
    with np.errstate(over="ignore"):
        mixed = _splitmix64(keys ^ (np.uint64(salt) * _GOLDEN))
    return torch.from_numpy((mixed % np.uint64(high)).astype(np.int64))


def identity(x: Tensor, keys: np.ndarray) -> Tensor:
    """Return the batch unchanged."""
    return x


def flip_crop(x: Tensor, keys: np.ndarray, pad: int = CROP_PAD) -> Tensor:
    """Horizontal flip (p = 0.5) and a crop from a ``pad``-pixel zero-padded image, each drawn from the sample's key."""
    n, _, h, w = x.shape
    flip = draw(keys, 1, 2) == 1
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = draw(keys, 2, 2 * pad + 1), draw(keys, 3, 2 * pad + 1)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    batch = torch.arange(n)[:, None, None]
    # Advanced indices split by the channel slice put the index dims first: (N, H, W, C).
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


Augment = Callable[[Tensor, np.ndarray], Tensor]
AUGMENTS: dict[str, Augment] = {"none": identity, "flip_crop": flip_crop}
# Augmentations that need (N, C, H, W) images.
IMAGE_ONLY = {"flip_crop"}


def get_augment(name: str, input_dim: int | None = None) -> Augment:
    """Look an augmentation up; an unknown name (or one that needs images) raises ConfigError."""
    if name not in AUGMENTS:
        raise ConfigError(f"unknown data.augment {name!r}; valid augmentations: {', '.join(AUGMENTS)}")
    if name in IMAGE_ONLY and input_dim is not None and input_dim != 4:
        raise ConfigError(f"data.augment {name!r} needs image inputs of shape (N, C, H, W), got {input_dim} dims")
    return AUGMENTS[name]
