"""Semi-supervised data: a labelled subset, the unlabeled remainder, and batches that mix the two.

The labelled subset is exactly what ``stratified_fraction`` keeps for the same fraction and seed, so a supervised
baseline with ``data.params.label_fraction=f`` trains on the very samples whose labels the semi-supervised run keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from kdforge.data.base import ArrayDataset, collate_batch, fraction_positions
from kdforge.errors import ConfigError

IGNORE = -100  # the label of an unlabeled sample: what F.cross_entropy and the objectives skip


def labelled_positions(ds: ArrayDataset, fraction: float, seed: int) -> Tensor:
    """Sorted positions whose labels are kept: those ``stratified_fraction(ds, fraction, seed)`` keeps."""
    if not 0 < fraction < 1:
        raise ConfigError(
            f"strategy.labelled_fraction={fraction} leaves no unlabeled data: it must be in (0, 1)"
            if fraction >= 1
            else f"strategy.labelled_fraction={fraction} keeps no labels: it must be in (0, 1)"
        )
    if ds.labels is None:
        raise ConfigError("strategy.labelled_fraction needs a labelled training set; this one has no labels")
    positions = fraction_positions(ds, fraction, seed)
    if len(positions) == len(ds):
        raise ConfigError(
            f"strategy.labelled_fraction={fraction} leaves no unlabeled data: each class keeps at least one label "
            f"and the {len(ds)} training samples are too few to split; lower it or use more data"
        )
    return positions


def mask_unlabelled(ds: ArrayDataset, positions: Tensor) -> ArrayDataset:
    """The same samples (inputs and fields shared) with every label outside ``positions`` set to -100."""
    if ds.labels is None:
        raise ConfigError("strategy.labelled_fraction needs a labelled training set; this one has no labels")
    keep = torch.zeros(len(ds), dtype=torch.bool)
    keep[torch.as_tensor(positions, dtype=torch.int64)] = True
    labels = ds.labels.clone()
    labels[~keep] = IGNORE
    return ds.replace(labels=labels)


class SemiBatchSampler(Sampler[list[int]]):
    """Batches of ``labelled_batch`` labelled + ``unlabelled_batch`` unlabeled positions; an epoch is one pass over
    the unlabeled set while the (small) labelled set is cycled, reshuffled at each pass, as in FixMatch.

    Every random draw of an epoch comes from ``generator`` inside ``__iter__``, so seeding the generator at the
    epoch's start (as the trainer does, from the run's seed and the epoch) reproduces that epoch's batches exactly.
    With ``tag`` positions are yielded as ``epoch * size + position``, as ``EpochSampler`` does, so augmented views
    change per epoch.
    """

    def __init__(
        self,
        labelled: Tensor,
        unlabelled: Tensor,
        labelled_batch: int,
        unlabelled_batch: int,
        generator: torch.Generator,
        size: int,
        tag: bool,
    ):
        if labelled_batch < 1:
            raise ConfigError(f"strategy.labelled_batch must be >= 1, got {labelled_batch}")
        if unlabelled_batch < 1:
            raise ConfigError(f"strategy.unlabelled_batch must be >= 1, got {unlabelled_batch}")
        if len(labelled) == 0:
            raise ConfigError("strategy.labelled_fraction leaves no labelled sample; raise it")
        if len(unlabelled) == 0:
            raise ConfigError("strategy.labelled_fraction leaves no unlabeled data: every sample keeps its label")
        self.labelled = torch.as_tensor(labelled, dtype=torch.int64)
        self.unlabelled = torch.as_tensor(unlabelled, dtype=torch.int64)
        self.labelled_batch, self.unlabelled_batch = labelled_batch, unlabelled_batch
        self.generator, self.size, self.tag = generator, size, tag
        self.epoch = -1

    def __len__(self) -> int:
        return math.ceil(len(self.unlabelled) / self.unlabelled_batch)

    def __iter__(self) -> Iterator[list[int]]:
        self.epoch += 1
        batches = len(self)
        unlabelled = self.unlabelled[torch.randperm(len(self.unlabelled), generator=self.generator)]
        # Enough reshuffled passes over the labelled set to fill every batch; drawn up front, so the epoch's whole
        # order depends only on the generator's state when iteration starts.
        need = batches * self.labelled_batch
        passes = math.ceil(need / len(self.labelled))
        cycle = [torch.randperm(len(self.labelled), generator=self.generator) for _ in range(passes)]
        labelled = self.labelled[torch.cat(cycle)[:need]]
        offset = self.epoch * self.size if self.tag else 0
        lb, ub = self.labelled_batch, self.unlabelled_batch
        for b in range(batches):
            batch = torch.cat([labelled[b * lb : (b + 1) * lb], unlabelled[b * ub : (b + 1) * ub]])
            yield (batch + offset).tolist()


def semi_loader(
    ds: ArrayDataset,
    labelled_positions: Tensor,
    labelled_batch: int,
    unlabelled_batch: int,
    seed: int,
    num_workers: int = 0,
) -> DataLoader:
    """A loader of mixed batches over ``ds`` with labels kept only at ``labelled_positions`` (others -100).

    ``loader.generator`` is the sampler's generator: seeding it the same way replays an epoch.
    """
    masked = mask_unlabelled(ds, labelled_positions)
    keep = torch.zeros(len(ds), dtype=torch.bool)
    keep[torch.as_tensor(labelled_positions, dtype=torch.int64)] = True
    generator = torch.Generator().manual_seed(seed)
    sampler = SemiBatchSampler(
        torch.nonzero(keep).flatten(),
        torch.nonzero(~keep).flatten(),
        labelled_batch,
        unlabelled_batch,
        generator,
        size=len(masked),
        tag=masked.augmented,
    )
    return DataLoader(
        masked,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_batch,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
