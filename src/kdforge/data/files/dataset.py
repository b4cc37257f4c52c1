"""FileDataset: one split of a files data set, read batch by batch from memory-mapped Arrow tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import Dataset


class Inputs(Protocol):
    """Turns source rows into a batch's model inputs (text: ids + mask + raw text; images: pixels)."""

    def batch(self, rows: Tensor) -> dict[str, Any]:
        """The input fields of the batch of source rows ``rows``."""
        ...


class FileDataset(Dataset):
    """Samples are rows of a source file; each keeps its id (its row number there) through every split.

    Speaks the protocol the rest of kdforge uses on ``ArrayDataset``: ``__getitems__`` returns a whole dict batch
    (padding happens here, per batch), and ``indices``, ``labels``, ``split`` and the augmentation attributes are
    read by loaders, teachers and stores. Files data is never augmented.
    """

    augment = "none"
    augmented = False
    views = None
    augment_seed = None

    def __init__(self, reader: Inputs, rows: Tensor, labels: Tensor | None, split: str):
        if labels is not None and len(labels) != len(rows):
            raise ValueError(f"FileDataset: {len(rows)} rows but {len(labels)} labels")
        self.reader = reader
        self.indices = torch.as_tensor(rows, dtype=torch.int64)  # row numbers in the source = sample ids
        self.labels = labels
        self.split = split
        self.fields: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, indices: Sequence[int] | Tensor) -> dict[str, Any]:
        """One batch: ``input`` (+ ``attention_mask`` and ``text`` for text), ``label`` when labelled, ``index``."""
        pos = torch.as_tensor(indices, dtype=torch.int64) % len(self)
        ids = self.indices[pos]
        batch = self.reader.batch(ids)
        if self.labels is not None:
            batch["label"] = self.labels[pos]
        batch["index"] = ids
        return batch

    def take(self, positions: Sequence[int] | Tensor, split: str | None = None) -> FileDataset:
        """The samples at ``positions`` (ids kept), reading the same tables."""
        pos = torch.as_tensor(positions, dtype=torch.int64)
        labels = None if self.labels is None else self.labels[pos]
        return FileDataset(self.reader, self.indices[pos], labels, split or self.split)

    def __repr__(self) -> str:
        return f"FileDataset(split={self.split!r}, n={len(self)}, labelled={self.labels is not None})"
