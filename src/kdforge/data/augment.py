"""Batched augmentations (images and token ids) whose randomness is a pure function of (seed, view, sample id).

Keying every draw on the sample and its view, not on a global RNG, makes an augmented view reproducible anywhere:
in another process, in another batch, or in `kdforge cache`, which stores the teacher's signal for view v of
sample i and must hand the student exactly that image again.
"""

from __future__ import annotations

import hashlib
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


def flip_crop(x: Tensor, keys: np.ndarray, pad: int = CROP_PAD, fill: tuple[float, ...] | None = None) -> Tensor:
    """Horizontal flip (p = 0.5) and a crop from a ``pad``-pixel padded image, each drawn from the sample's key.

    The padding is 0 (the mean pixel of normalised inputs) or ``fill`` per channel (e.g. black after normalisation).
    """
    n, _, h, w = x.shape
    flip = draw(keys, 1, 2) == 1
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if fill is None:
        padded = F.pad(x, (pad, pad, pad, pad))
    else:
        value = torch.tensor(fill, dtype=x.dtype).view(1, -1, 1, 1)
        padded = F.pad(x - value, (pad, pad, pad, pad)) + value
    dy, dx = draw(keys, 2, 2 * pad + 1), draw(keys, 3, 2 * pad + 1)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    batch = torch.arange(n)[:, None, None]
    # Advanced indices split by the channel slice put the index dims first: (N, H, W, C).
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def salted_keys(keys: np.ndarray, name: str) -> np.ndarray:
    """Keys for an extra view ``name``: independent of the main view's draws, yet still fixed by the sample key."""
    salt = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return _splitmix64(keys ^ np.uint64(salt))


def _position_keys(keys: np.ndarray, length: int) -> np.ndarray:
    """(N, L) keys, one per token position of each sample, for per-token draws."""
    pos = np.arange(length, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _splitmix64(keys[:, None] ^ (pos[None, :] * _GOLDEN + np.uint64(1)))


STRONG_PAD, CUTOUT, JITTER = 4, 8, 0.2


def strong(x: Tensor, keys: np.ndarray) -> Tensor:
    """FixMatch-like strong view: brightness/contrast jitter, flip, pad-crop, then a zeroed square cutout.

    Pad and cutout shrink on small images (a quarter and half of the side), so an 8×8 digit keeps most of itself.
    """
    n, _, h, w = x.shape
    # Jitter first (as colour ops precede the crop in FixMatch) so that padding and cutout stay exact zeros; in units
    # of each sample's own spread, since inputs may be normalised (mean 0) and "black" is then not 0.
    steps = 1000
    contrast = 1 + JITTER * (2 * draw(keys, 4, steps + 1).to(x.dtype) / steps - 1)
    brightness = JITTER * (2 * draw(keys, 5, steps + 1).to(x.dtype) / steps - 1)
    flat = x.reshape(n, -1)
    mean, std = flat.mean(1), flat.std(1, unbiased=False)
    shift = brightness * std - (contrast - 1) * mean
    x = x * contrast[:, None, None, None] + shift[:, None, None, None]
    x = flip_crop(x, keys, pad=max(1, min(STRONG_PAD, min(h, w) // 4)))
    # Cutout: a size×size square centred anywhere in the image, clipped at the border (DeVries & Taylor 2017).
    size = max(1, min(CUTOUT, h // 2, w // 2))
    top, left = draw(keys, 6, h) - size // 2, draw(keys, 7, w) - size // 2
    rows, cols = torch.arange(h)[None, :], torch.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + size)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + size)[:, None])
    return x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0)


PAD_ID, CLS_ID, SEP_ID, MASK_ID = 0, 101, 102, 103  # BERT WordPiece ids of the text data sets
_SPECIAL = (PAD_ID, CLS_ID, SEP_ID)
_SCORE_RANGE = 1 << 30


def _real(ids: Tensor) -> Tensor:
    """Tokens that carry text: not padding, [CLS] or [SEP]."""
    return ~torch.isin(ids, torch.tensor(_SPECIAL, dtype=ids.dtype))


def _mask_tokens(ids: Tensor, keys: np.ndarray, rate: float) -> Tensor:
    """Replace round(rate × real tokens) randomly chosen real tokens of each sample by [MASK]."""
    real = _real(ids)
    score = draw(_position_keys(keys, ids.shape[1]).reshape(-1), 11, _SCORE_RANGE).reshape(ids.shape)
    # Rank the real tokens by their random score; the lowest-ranked k of each row are masked (an exact share).
    score = torch.where(real, score, _SCORE_RANGE)
    rank = torch.argsort(torch.argsort(score, dim=1), dim=1)
    k = torch.floor(real.sum(1) * rate + 0.5).to(torch.int64)
    chosen = real & (rank < k[:, None])
    return ids.masked_fill(chosen, MASK_ID)


def _swap_adjacent(ids: Tensor, keys: np.ndarray) -> Tensor:
    """Swap one random pair of adjacent real tokens in each sample (none when it has no such pair)."""
    n, length = ids.shape
    if length < 2:
        return ids
    real = _real(ids)
    pair = real[:, :-1] & real[:, 1:]
    score = draw(_position_keys(keys, length - 1).reshape(-1), 12, _SCORE_RANGE).reshape(n, length - 1)
    first = torch.where(pair, score, _SCORE_RANGE).argmin(1)
    has = pair.any(1)
    rows = torch.arange(n)[has]
    a, b = first[has], first[has] + 1
    out = ids.clone()
    out[rows, a], out[rows, b] = ids[rows, b], ids[rows, a]
    return out


def token_mask(x: Tensor, keys: np.ndarray) -> Tensor:
    """Replace 15% of the real tokens (not padding, [CLS], [SEP]) by [MASK]."""
    return _mask_tokens(x, keys, 0.15)


def token_mask_strong(x: Tensor, keys: np.ndarray) -> Tensor:
    """Replace 35% of the real tokens by [MASK], then swap two adjacent real tokens."""
    return _swap_adjacent(_mask_tokens(x, keys, 0.35), keys)


Augment = Callable[[Tensor, np.ndarray], Tensor]
AUGMENTS: dict[str, Augment] = {
    "none": identity,
    "flip_crop": flip_crop,
    "strong": strong,
    "token_mask": token_mask,
    "token_mask_strong": token_mask_strong,
}
# Augmentations that need (N, C, H, W) images, and those that need (N, L) integer token ids.
IMAGE_ONLY = {"flip_crop", "strong"}
TEXT_ONLY = {"token_mask", "token_mask_strong"}


def get_augment(
    name: str, input_dim: int | None = None, integer: bool | None = None, key: str = "data.augment"
) -> Augment:
    """Look an augmentation up; an unknown name, or one that does not fit the inputs, raises ConfigError.

    ``key`` names the setting in the message (``data.augment``, or an extra view's name).
    """
    if name not in AUGMENTS:
        raise ConfigError(f"unknown {key} {name!r}; valid augmentations: {', '.join(AUGMENTS)}")
    kind = {True: "integer ", False: "floating-point ", None: ""}[integer]
    if name in IMAGE_ONLY and input_dim is not None and input_dim != 4:
        raise ConfigError(f"{key}={name!r} needs image inputs of shape (N, C, H, W), got {input_dim}-dim {kind}inputs")
    if name in TEXT_ONLY and ((input_dim is not None and input_dim != 2) or integer is False):
        raise ConfigError(
            f"{key}={name!r} needs integer token ids of shape (N, L) (pad id 0), got {input_dim}-dim {kind}inputs"
        )
    return AUGMENTS[name]
