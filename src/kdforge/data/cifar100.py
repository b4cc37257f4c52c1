"""CIFAR-100 from its binary distribution (cifar-100-binary: train.bin, test.bin), never downloaded.

The binary files are plain records (coarse label, fine label, 3,072 pixel bytes), read with numpy: unlike the
"python" distribution they need no unpickling, so a hostile file can only fail the size check.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from kdforge.data.augment import AUGMENTS, IMAGE_ONLY, flip_crop, get_augment
from kdforge.data.base import ArrayDataset, DataBundle, fingerprint, subset, train_val_split, with_augment
from kdforge.data.fetch import cache_root
from kdforge.errors import ConfigError, DataNotFoundError
from kdforge.registry import DATASETS

NAME = "cifar100"
FOLDER = "cifar-100-binary"
RECORD = 2 + 3 * 32 * 32
SIZES = {"train.bin": 50_000, "test.bin": 10_000}
# Per-channel mean and std of the training pixels in [0, 1] (the values RepDistiller and mdistiller normalise with).
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
# The protocol's augmentation (RepDistiller, mdistiller): a flip and a 32x32 crop of the image padded by 4 black pixels,
# black being (0 - mean) / std once normalised.
AUGMENTS["cifar"] = functools.partial(flip_crop, pad=4, fill=tuple(-m / s for m, s in zip(MEAN, STD, strict=True)))
IMAGE_ONLY.add("cifar")


def search_dirs(root: str | None) -> list[Path]:
    """Where the folder is looked for: ``root``, $KDFORGE_DATA_DIR/cifar-100-binary, the user cache."""
    if root is not None:
        return [Path(root).expanduser()]
    env = os.environ.get("KDFORGE_DATA_DIR", "").strip()
    return [*([Path(env).expanduser() / FOLDER] if env else []), cache_root() / FOLDER]


def locate(root: str | None) -> Path:
    """The folder holding train.bin and test.bin; DataNotFoundError lists every place tried."""
    tried = []
    for folder in search_dirs(root):
        if all((folder / n).is_file() for n in SIZES):
            return folder
        tried.append(f"{folder} ({'no such folder' if not folder.is_dir() else 'no train.bin/test.bin'})")
    raise DataNotFoundError(
        "CIFAR-100 (binary version) not found. Looked in:\n"
        + "".join(f"  - {t}\n" for t in tried)
        + "Unpack cifar-100-binary.tar.gz there, or pass data.params.root=FOLDER (the folder holding train.bin)."
    )


def read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) fine labels of one binary file, its size checked first."""
    size = path.stat().st_size
    if size == 0 or size % RECORD:
        raise ConfigError(f"{str(path)!r}: {size} bytes is not a whole number of {RECORD}-byte CIFAR-100 records")
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD)
    labels = raw[:, 1].astype(np.int64)
    if labels.max() >= 100:
        raise ConfigError(f"{str(path)!r}: fine label {int(labels.max())} is not a CIFAR-100 class (0-99)")
    return raw[:, 2:].reshape(-1, 3, 32, 32), labels


def class_names(folder: Path) -> list[str]:
    """fine_label_names.txt when present, else class_0 ... class_99."""
    path = folder / "fine_label_names.txt"
    names = [n.strip() for n in path.read_text().splitlines() if n.strip()] if path.is_file() else []
    return names if len(names) == 100 else [f"class_{i}" for i in range(100)]


@functools.lru_cache(maxsize=1)
def load_arrays(folder: Path) -> tuple[ArrayDataset, ArrayDataset, str]:
    """Both splits normalised to float32, and the raw bytes' fingerprint."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    out = []
    raw = {}
    for name, split in (("train.bin", "train"), ("test.bin", "test")):
        images, labels = read_split(folder / name)
        raw[split] = (images, labels)
        x = (torch.from_numpy(images).float().div_(255.0) - mean) / std
        out.append(ArrayDataset(x, torch.from_numpy(labels), split=split))
    return out[0], out[1], fingerprint(NAME, raw)


@DATASETS.register(NAME)
def cifar100(
    root: str | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    augment: str = "cifar",
    train_limit: int | None = None,
) -> DataBundle:
    """CIFAR-100 32x32 colour images, 100 classes; the standard crop (pad 4) and flip augmentation by default."""
    get_augment(augment)
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    folder = locate(root)
    full, test, fp = load_arrays(folder)
    train, val = train_val_split(full, val_fraction, seed)
    if train_limit is not None and train_limit < len(train):
        train = subset(train, range(train_limit))
    names = class_names(folder)
    return DataBundle(
        train=with_augment(train, augment),
        val=val,
        test=test,
        num_classes=100,
        input_shape=(3, 32, 32),
        class_names=names,
        name=NAME,
        fingerprint=fp,
    )
