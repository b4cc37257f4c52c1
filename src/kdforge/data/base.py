"""In-memory datasets with stable sample ids, stratified splits, batched loading and the dataset lookup."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data import default_collate as _default_collate

from kdforge.data.augment import get_augment, salted_keys, sample_keys
from kdforge.errors import ConfigError
from kdforge.registry import DATASETS, did_you_mean

Batch = dict[str, Tensor]


class ArrayDataset(Dataset):
    """Samples held in tensors; each carries its id (its position in the original split).

    With an augmentation, a loader index ``e * len(ds) + p`` means sample ``p`` seen in epoch ``e``
    (see ``EpochSampler``); its view is ``e`` (or ``e % views`` when the views cycle, as a store's do), and the
    augmentation is drawn from (``augment_seed``, view, sample id) alone.

    ``extra_views`` {name: augmentation}: each batch also carries ``input@name``, the same samples under that
    augmentation, drawn from the same (seed, view, sample id) salted by the name (independent of the main draws).
    """

    def __init__(
        self,
        inputs: Tensor,
        labels: Tensor | None,
        augment: str = "none",
        indices: Tensor | None = None,
        split: str = "train",
        augment_seed: int = 0,
        views: int | None = None,
        fields: dict[str, Tensor] | None = None,
        extra_views: dict[str, str] | None = None,
    ):
        n = len(inputs)
        if labels is not None and len(labels) != n:
            raise ValueError(f"ArrayDataset: {n} inputs but {len(labels)} labels")
        if indices is None:
            indices = torch.arange(n, dtype=torch.int64)
        if len(indices) != n:
            raise ValueError(f"ArrayDataset: {n} inputs but {len(indices)} sample ids")
        # Further per-sample tensors a batch carries under their own names, e.g. a sequence's attention_mask.
        self.fields = dict(fields or {})
        for key, value in self.fields.items():
            if len(value) != n:
                raise ValueError(f"ArrayDataset: {n} inputs but {len(value)} rows of field {key!r}")
        self.inputs = inputs
        self.labels = labels
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        self.augment = augment
        self.split = split
        if views is not None and views < 1:
            raise ConfigError(f"views must be >= 1, got {views}")
        self.augment_seed = augment_seed
        self.views = views
        integer = not (inputs.is_floating_point() or inputs.is_complex())
        self._augment = get_augment(augment, inputs.dim(), integer)
        self.extra_views = dict(extra_views or {})
        self._extra = {
            name: get_augment(aug, inputs.dim(), integer, key=f"view {name!r} (input@{name})")
            for name, aug in self.extra_views.items()
        }

    @property
    def augmented(self) -> bool:
        """Whether samples differ between views (extra views count: they need the epoch's tag too)."""
        return self.augment != "none" or bool(self.extra_views)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> Batch:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, indices: Sequence[int] | Tensor) -> Batch:
        """Fetch a whole batch with one indexing op per tensor (DataLoader calls this when present)."""
        flat = torch.as_tensor(indices, dtype=torch.int64)
        pos = flat % len(self)
        batch = {"input": self.inputs[pos]}
        if self.augmented:
            epoch = flat // len(self)
            view = epoch % self.views if self.views is not None else epoch
            keys = sample_keys(self.augment_seed, view, self.indices[pos])
            plain = batch["input"]
            batch["input"] = self._augment(plain, keys)
            for name, fn in self._extra.items():
                batch[f"input@{name}"] = fn(plain, salted_keys(keys, name))
            batch["view"] = view
        if self.labels is not None:
            batch["label"] = self.labels[pos]
        for key, value in self.fields.items():
            batch[key] = value[pos]
        batch["index"] = self.indices[pos]
        return batch

    def replace(self, **changes: Any) -> ArrayDataset:
        """The same samples (tensors shared, not copied) with some constructor arguments changed."""
        current = {
            "inputs": self.inputs,
            "labels": self.labels,
            "augment": self.augment,
            "indices": self.indices,
            "split": self.split,
            "augment_seed": self.augment_seed,
            "views": self.views,
            "fields": self.fields,
            "extra_views": self.extra_views,
        }
        return ArrayDataset(**{**current, **changes})

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(split={self.split!r}, n={len(self)}, input_shape={tuple(self.inputs.shape[1:])}, "
            f"labelled={self.labels is not None}, augment={self.augment!r}"
            + (f", extra_views={self.extra_views!r})" if self.extra_views else ")")
        )


class EpochSampler(Sampler[int]):
    """Shuffles like ``RandomSampler``; tags every index with its epoch and can keep reads local to store shards.

    - ``tag``: yield ``epoch * n + position``, so an augmented sample knows its view. The tag travels with the index
      through Accelerate's batch sharding and into DataLoader workers, with no shared mutable state.
    - ``block``: a store too large for memory holds ``block`` rows per shard; the epoch visits shards in a random
      order, ``window`` at a time, shuffling samples only within those, so each batch reads from at most ``window``
      shards and the next ones can be prefetched. Row of position p in epoch e: ``(e % views) * n + p``.
    """

    def __init__(
        self,
        size: int,
        generator: torch.Generator | None = None,
        tag: bool = False,
        block: int | None = None,
        window: int = 4,
        views: int | None = None,
    ):
        self.size = size
        self.generator = generator  # Accelerate synchronises this generator across processes
        self.tag, self.block, self.window, self.views = tag, block, max(window, 1), views
        self.epoch = -1

    def __len__(self) -> int:
        return self.size

    def _order(self) -> Tensor:
        noise = torch.randperm(self.size, generator=self.generator)
        if self.block is None:
            return noise
        view = self.epoch % self.views if self.views else 0
        blocks = (view * self.size + torch.arange(self.size)) // self.block
        blocks = blocks - blocks[0]
        rank = torch.randperm(int(blocks[-1]) + 1, generator=self.generator)[blocks]
        # Sort by (window of shards, random tie-break): windows in random order, samples shuffled inside each.
        return torch.argsort((rank // self.window) * self.size + noise)

    def __iter__(self) -> Iterator[int]:
        self.epoch += 1
        order = self._order()
        yield from (order + self.epoch * self.size if self.tag else order).tolist()


def id_space(ds: Any) -> int | None:
    """Rows a table indexed by sample id needs (largest id + 1): a memory bank of the data set's size."""
    indices = getattr(ds, "indices", None)
    if torch.is_tensor(indices) and indices.numel():
        return int(indices.max()) + 1
    try:
        return len(ds)
    except TypeError:
        return None


def example_inputs(ds: Dataset, n: int) -> Tensor:
    """The model inputs of the first ``n`` samples of ``ds``, batched as training batches are (for profiling)."""
    return ds.__getitems__(list(range(min(n, len(ds)))))["input"]  # type: ignore[attr-defined]


def collate_batch(batch: Batch | list[Batch]) -> Batch:
    """Pass an already-batched dict through; stack a list of per-sample dicts."""
    if isinstance(batch, dict):
        return batch
    return _default_collate(batch)


def subset(ds: ArrayDataset, positions: Sequence[int] | Tensor, augment: str | None = None) -> ArrayDataset:
    """The samples at ``positions`` of ``ds``, keeping their sample ids (and augmentation unless given)."""
    pos = torch.as_tensor(positions, dtype=torch.int64)
    return ArrayDataset(
        ds.inputs[pos],
        None if ds.labels is None else ds.labels[pos],
        augment=ds.augment if augment is None else augment,
        indices=ds.indices[pos],
        split=ds.split,
        augment_seed=ds.augment_seed,
        views=ds.views,
        fields={k: v[pos] for k, v in ds.fields.items()},
        extra_views=ds.extra_views,
    )


def with_augment(
    ds: ArrayDataset, augment: str, augment_seed: int | None = None, views: int | str | None = "keep"
) -> ArrayDataset:
    """The same samples (tensors shared, not copied) with another augmentation, seed or view cycle."""
    return ds.replace(
        augment=augment,
        augment_seed=ds.augment_seed if augment_seed is None else augment_seed,
        views=ds.views if views == "keep" else views,
    )


def with_views(ds: ArrayDataset, extra_views: dict[str, str] | None) -> ArrayDataset:
    """The same samples (tensors shared) whose batches also carry ``input@name`` for each extra view."""
    return ds.replace(extra_views=extra_views)


def in_memory(ds: Dataset) -> ArrayDataset:
    """``ds`` as an ArrayDataset held in memory (a files split read once, padded as one batch); kept as it is when
    it already is one. What per-sample augmentation and extra views need."""
    if isinstance(ds, ArrayDataset):
        return ds
    batch = ds.__getitems__(list(range(len(ds))))  # type: ignore[attr-defined]
    n = len(batch["input"])
    fields = {
        k: v
        for k, v in batch.items()
        if k not in ("input", "label", "index", "view") and torch.is_tensor(v) and len(v) == n
    }
    return ArrayDataset(
        batch["input"], batch.get("label"), indices=batch["index"], split=getattr(ds, "split", "train"), fields=fields
    )


def _stratified_pick(ds: ArrayDataset, count: Callable[[int], int], seed: int) -> Tensor:
    """Sorted positions holding ``count(n_c)`` random samples of each class (of all when unlabelled)."""
    g = torch.Generator().manual_seed(seed)
    if ds.labels is None or ds.labels.dim() != 1:
        groups = [torch.arange(len(ds))]
    else:
        groups = [torch.nonzero(ds.labels == c).flatten() for c in torch.unique(ds.labels)]
    picked = [pos[torch.randperm(len(pos), generator=g)[: count(len(pos))]] for pos in groups]
    if not picked:
        return torch.empty(0, dtype=torch.int64)
    return torch.sort(torch.cat(picked)).values


def fraction_positions(ds: ArrayDataset, fraction: float, seed: int) -> Tensor:
    """Sorted positions of ``fraction`` of each class (at least one per class): what ``stratified_fraction`` keeps."""
    return _stratified_pick(ds, lambda n: max(1, round(fraction * n)), seed)


def stratified_fraction(ds: ArrayDataset, fraction: float, seed: int) -> ArrayDataset:
    """Keep ``fraction`` of each class (at least one sample per class), chosen reproducibly from ``seed``."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"data.label_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return ds
    return subset(ds, fraction_positions(ds, fraction, seed))


def train_val_split(ds: ArrayDataset, val_fraction: float, seed: int) -> tuple[ArrayDataset, ArrayDataset | None]:
    """Split off a stratified validation set (never augmented); ``val_fraction`` 0 gives no validation set."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return ds, None
    # Leave at least one training sample of every class.
    val_pos = _stratified_pick(ds, lambda n: min(round(val_fraction * n), max(n - 1, 0)), seed)
    keep = torch.ones(len(ds), dtype=torch.bool)
    keep[val_pos] = False
    return subset(ds, torch.nonzero(keep).flatten()), subset(ds, val_pos, augment="none")


def fingerprint(name: str, splits: dict[str, Sequence[np.ndarray | Tensor]]) -> str:
    """Short sha256 hex over the data set name, each split name and its raw arrays' bytes."""
    h = hashlib.sha256(name.encode())
    for split, arrays in splits.items():
        h.update(b"\0" + split.encode())
        for a in arrays:
            arr = np.ascontiguousarray(a.numpy() if isinstance(a, Tensor) else a)
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:16]


@dataclass
class DataBundle:
    """The splits of one data set plus what models and stores need to know about it."""

    train: ArrayDataset
    val: ArrayDataset | None
    test: ArrayDataset
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str]
    name: str
    fingerprint: str
    tokenizer: str | None = None  # a local tokenizer folder, for data of token ids that can be decoded


def make_loader(
    ds: ArrayDataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    drop_last: bool = False,
    num_workers: int = 0,
    read_block: int | None = None,
    read_window: int = 4,
) -> DataLoader:
    """A DataLoader yielding dict batches, with its shuffling order fixed by ``seed``.

    ``read_block``: rows per shard of a store read from disk; batches then come from ``read_window`` shards at a time.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    augmented = getattr(ds, "augmented", False)
    sampler = None
    # Augmented data needs the epoch in each index to pick its view; plain data keeps torch's sampler.
    if shuffle and (augmented or read_block is not None):
        views = getattr(ds, "views", None)
        sampler = EpochSampler(len(ds), generator, tag=augmented, block=read_block, window=read_window, views=views)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate_batch,
        generator=generator,
        persistent_workers=num_workers > 0,
    )


def dataset_params(name: str) -> dict[str, Any]:
    """The builder parameters of data set ``name`` with their defaults."""
    sig = inspect.signature(DATASETS.get(name))
    return {k: p.default for k, p in sig.parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}


def load_dataset(name: str, **params: Any) -> DataBundle:
    """Build data set ``name``; an unknown name or parameter raises ConfigError listing the valid ones."""
    builder = DATASETS.get(name)
    sig = inspect.signature(builder)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        valid = dataset_params(name)
        for key in params:
            if key not in valid:
                near = did_you_mean(key, list(valid))
                listed = ", ".join(k if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in valid.items())
                raise ConfigError(f"dataset {name!r} has no parameter {key!r}.{near} Valid parameters: {listed}")
    try:
        sig.bind(**params)
    except TypeError as err:
        raise ConfigError(f"dataset {name!r}: {err}") from None
    return builder(**params)
