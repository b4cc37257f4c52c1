"""Fashion-MNIST from its original IDX files: found locally, or downloaded once into the user cache."""

from __future__ import annotations

import functools
import http.client
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from kdforge.data.augment import get_augment
from kdforge.data.base import (
    ArrayDataset,
    DataBundle,
    fingerprint,
    stratified_fraction,
    subset,
    train_val_split,
    with_augment,
)
from kdforge.data.fetch import cache_root, download, offline
from kdforge.data.idx import IdxFormatError, read_idx
from kdforge.errors import ConfigError, DataNotFoundError
from kdforge.registry import DATASETS

NAME = "fashion_mnist"
FOLDER = "fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets") / FOLDER
DATA_DIR_ENV = "KDFORGE_DATA_DIR"
CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IMAGE_SIZE = 28
# Mean and standard deviation of the training pixels scaled to [0, 1].
MEAN, STD = 0.2860, 0.3530


class Arrays(NamedTuple):
    """Parsed and normalised splits plus the fingerprint of the raw bytes."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    fingerprint: str


def user_cache_dir() -> Path:
    """Where the download goes: ~/.cache/kdforge/datasets/fashion-mnist."""
    return cache_root() / FOLDER


def find_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The four files in ``folder`` (gzipped or not) and the names of those that are missing."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, stem in FILES.items():
        path = next((folder / n for n in (f"{stem}.gz", stem) if (folder / n).is_file()), None)
        if path is None:
            missing.append(f"{stem}.gz")
        else:
            found[key] = path
    return found, missing


def search_dirs(root: str | os.PathLike[str] | None) -> list[tuple[str, Path | None]]:
    """(label, folder) in search order; folder is None for a place that is not configured."""
    if root is not None:
        return [("root", Path(root).expanduser())]
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    return [
        ("Debian package", DEBIAN_DIR),
        (f"${DATA_DIR_ENV}/{FOLDER}", Path(env).expanduser() / FOLDER if env else None),
        ("user cache", user_cache_dir()),
    ]


def _download_all(dest: Path) -> dict[str, Path]:
    """Download the files missing from ``dest``, each validated before it is renamed into place."""
    _, missing = find_files(dest)
    for name in missing:
        download(URL + name, dest / name, validate=read_idx)
    found, missing = find_files(dest)
    if missing:
        raise OSError(f"still missing after download: {', '.join(missing)}")
    return found


def locate(root: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Find (or download) the four IDX files; DataNotFoundError lists every place tried and the fixes."""
    tried: list[str] = []
    for label, folder in search_dirs(root):
        if folder is None:
            tried.append(f"{label}: ${DATA_DIR_ENV} is not set")
            continue
        found, missing = find_files(folder)
        if not missing:
            return found
        why = "no such folder" if not folder.is_dir() else f"missing {', '.join(missing)}"
        tried.append(f"{label}: {folder} ({why})")
    if root is None:
        if offline():
            tried.append(f"download from {URL}: skipped because KDFORGE_OFFLINE is set")
        else:
            try:
                return _download_all(user_cache_dir())
            except (OSError, http.client.HTTPException, IdxFormatError) as err:
                tried.append(f"download from {URL} into {user_cache_dir()}: failed ({err})")
    raise DataNotFoundError(
        "Fashion-MNIST not found. Looked in:\n" + "".join(f"  - {t}\n" for t in tried) + "Get it with one of:\n"
        "  - sudo apt-get install dataset-fashion-mnist\n"
        "  - apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb DIR, then pass\n"
        f"    root=DIR/usr/share/datasets/{FOLDER} or set {DATA_DIR_ENV}=DIR/usr/share/datasets\n"
        "  - make data"
    )


def _normalise(images: np.ndarray) -> Tensor:
    x = torch.from_numpy(images).to(torch.float32).div_(255.0).sub_(MEAN).div_(STD)
    return x.unsqueeze(1)


def _check(images: np.ndarray, labels: np.ndarray, image_path: Path, label_path: Path) -> None:
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise IdxFormatError(
            f"{image_path}: expected uint8 images of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise IdxFormatError(f"{label_path}: expected {len(images)} labels, got shape {labels.shape}")
    if len(labels) and int(labels.max()) >= len(CLASS_NAMES):
        raise IdxFormatError(f"{label_path}: label {int(labels.max())} is not a Fashion-MNIST class (0-9)")


@functools.lru_cache(maxsize=2)
def load_arrays(paths: tuple[Path, Path, Path, Path]) -> Arrays:
    """Parse, check and normalise the four files (train images/labels, test images/labels); cached."""
    train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
    _check(train_x, train_y, paths[0], paths[1])
    _check(test_x, test_y, paths[2], paths[3])
    fp = fingerprint(NAME, {"train": (train_x, train_y), "test": (test_x, test_y)})
    return Arrays(
        _normalise(train_x),
        torch.from_numpy(train_y.astype(np.int64)),
        _normalise(test_x),
        torch.from_numpy(test_y.astype(np.int64)),
        fp,
    )


@DATASETS.register(NAME)
def fashion_mnist(
    root: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: str = "none",
    label_fraction: float = 1.0,
    train_limit: int | None = None,
) -> DataBundle:
    """Fashion-MNIST 28x28 grey images, 10 classes; validation carved from the training set."""
    # Check cheap parameters before reading 30 MB of data.
    get_augment(augment)
    if not 0 < label_fraction <= 1:
        raise ConfigError(f"data.label_fraction must be in (0, 1], got {label_fraction}")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    if train_limit is not None and train_limit < 1:
        raise ConfigError(f"data.train_limit must be a positive integer or null, got {train_limit}")
    files = locate(root)
    arrays = load_arrays(tuple(files[k] for k in FILES))
    full = ArrayDataset(arrays.train_x, arrays.train_y, split="train")
    train, val = train_val_split(full, val_fraction, seed)
    train = stratified_fraction(train, label_fraction, seed)
    if train_limit is not None and train_limit < len(train):
        train = subset(train, range(train_limit))
    train = with_augment(train, augment)
    test = ArrayDataset(arrays.test_x, arrays.test_y, split="test")
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=len(CLASS_NAMES),
        input_shape=(1, IMAGE_SIZE, IMAGE_SIZE),
        class_names=list(CLASS_NAMES),
        name=NAME,
        fingerprint=arrays.fingerprint,
    )
