"""Images: an image folder's listing as an Arrow table, and batches decoded with PIL into normalised C×H×W floats."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from kdforge.data.files.gather import Column
from kdforge.errors import ConfigError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGE_COLUMN, LABEL_COLUMN = "image", "label"  # the columns of an image folder's listing
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _visible(p: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in p.relative_to(root).parts)


def list_image_folder(key: str, path: Path) -> datasets.Dataset:
    """(image path relative to ``path``, class folder name) of every image under ``path/<class>/``, sorted: row i is
    sample id i."""
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    images: list[str] = []
    labels: list[str] = []
    for folder in classes:
        found = sorted(
            str(p.relative_to(path)) for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and _visible(p, folder)
        )
        images += found
        labels += [folder.name] * len(found)
    if not images:
        raise ConfigError(
            f"{key}={str(path)!r} is an image folder without class sub-folders holding images; expected "
            f"{path!s}/<class>/<image> with one of {', '.join(sorted(SUFFIXES))}"
        )
    table = pa.table({IMAGE_COLUMN: pa.array(images, pa.string()), LABEL_COLUMN: pa.array(labels, pa.string())})
    return datasets.Dataset(table)


@dataclass(frozen=True)
class ImageSpec:
    """What every image becomes: PIL mode (L: 1 channel, RGB: 3), size (W, H), and per-channel mean/std."""

    mode: str
    size: tuple[int, int]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return (1 if self.mode == "L" else 3, self.size[1], self.size[0])


def open_image(value: Any, base: Path) -> Image.Image:
    """A PIL image from a path (relative to ``base``) or a ``datasets`` Image cell ({bytes, path})."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        value = value.get("path")
    if not isinstance(value, str) or not value:
        raise OSError(f"no image in the cell ({value!r})")
    path = Path(value).expanduser()
    return Image.open(path if path.is_absolute() else base / path)


def image_error(key: str, value: Any, base: Path, row: int, err: BaseException) -> ConfigError:
    """The one-line error for an image that cannot be read: key, file, row and why (without repeating the path)."""
    why = "not an image Pillow can read" if isinstance(err, UnidentifiedImageError) else " ".join(str(err).split())
    where = f"(row {row + 1}, sample id {row})"
    return ConfigError(f"{key}: image {describe(value, base)!r} {where} cannot be read: {why[:160]}")


def describe(value: Any, base: Path) -> str:
    """The file a cell names, for error messages."""
    if isinstance(value, dict):
        return str(value.get("path") or "<image bytes>")
    return str(base / str(value))


class ImageInputs:
    """Decodes a batch of rows of one split's image column into a normalised (B, C, H, W) float tensor."""

    def __init__(self, rows: datasets.Dataset, column: str, spec: ImageSpec, key: str, base: Path):
        self.rows, self.column, self.spec, self.key, self.base = rows, column, spec, key, base
        self._values = Column(rows, column)

    def pixels(self, value: Any, row: int) -> np.ndarray:
        """One image as uint8 (H, W) or (H, W, 3) in the spec's mode and size; an unreadable one names its file."""
        try:
            with open_image(value, self.base) as im:
                im = im.convert(self.spec.mode)
                if im.size != self.spec.size:
                    im = im.resize(self.spec.size, Image.Resampling.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise image_error(self.key, value, self.base, row, err) from None

    def normalise(self, images: np.ndarray) -> Tensor:
        """uint8 (B, H, W[, C]) → float (B, C, H, W) in [0, 1], then standardised per channel."""
        x = torch.from_numpy(images).to(torch.float32).div_(255.0)
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()
        if self.spec.mean:
            mean = torch.tensor(self.spec.mean).view(1, -1, 1, 1)
            std = torch.tensor(self.spec.std).view(1, -1, 1, 1)
            x = x.sub_(mean).div_(std)
        return x

    def batch(self, rows: Tensor) -> dict[str, Any]:
        """``{"input": (B, C, H, W)}`` for source rows ``rows``."""
        values = self._values.take(rows.numpy()).to_pylist()
        return {"input": self.normalise(np.stack([self.pixels(v, int(r)) for v, r in zip(values, rows, strict=True)]))}
