"""scikit-learn's bundled 8x8 handwritten digits: a tiny image set that needs no download."""

from __future__ import annotations

import functools
from typing import cast

import numpy as np
import torch
from torch import Tensor

from kdforge.data.augment import get_augment
from kdforge.data.base import (
    ArrayDataset,
    DataBundle,
    fingerprint,
    stratified_fraction,
    train_val_split,
    with_augment,
)
from kdforge.errors import ConfigError
from kdforge.registry import DATASETS

NAME = "digits"
IMAGE_SIZE = 8
# load_digits pixels are counts of set bits in 4x4 blocks, so 16 is the largest value.
MAX_PIXEL = 16.0


@functools.lru_cache(maxsize=1)
def load_arrays() -> tuple[Tensor, Tensor, str]:
    """All 1797 images standardised as (N, 1, 8, 8) float32, their labels and the fingerprint."""
    # Imported here: scikit-learn costs ~1.5 s to import, which every other command (and every error) would pay.
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = np.asarray(raw.images, dtype=np.float64)
    labels = np.asarray(raw.target, dtype=np.int64)
    x = images / MAX_PIXEL
    # Statistics over all images rather than one split: the same image maps to the same tensor for every seed.
    x = (x - x.mean()) / x.std()
    fp = fingerprint(NAME, {"all": (images, labels)})
    return torch.from_numpy(x.astype(np.float32)).unsqueeze(1), torch.from_numpy(labels), fp


@DATASETS.register(NAME)
def digits(
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: str = "none",
    label_fraction: float = 1.0,
    test_fraction: float = 0.25,
) -> DataBundle:
    """The 8x8 digits, 10 classes; stratified seeded test split, then validation from the rest."""
    get_augment(augment)
    if not 0 < test_fraction < 1:
        raise ConfigError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    inputs, labels, fp = load_arrays()
    # Sample ids index the full 1797-image array, so they are unique across train, val and test.
    full = ArrayDataset(inputs, labels, split="all")
    rest, held_out = train_val_split(full, test_fraction, seed)
    test = cast(ArrayDataset, held_out)  # test_fraction > 0, so the split always returns one
    train, val = train_val_split(rest, val_fraction, seed + 1)
    train = with_augment(stratified_fraction(train, label_fraction, seed), augment)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=10,
        input_shape=(1, IMAGE_SIZE, IMAGE_SIZE),
        class_names=[str(d) for d in range(10)],
        name=NAME,
        fingerprint=fp,
    )
