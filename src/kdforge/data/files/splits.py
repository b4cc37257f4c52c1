"""Carve validation and test rows out of a training file: stratified by label, seeded, sample ids kept."""

from __future__ import annotations

import torch
from torch import Tensor

from kdforge.data.files.labels import IGNORE
from kdforge.errors import ConfigError


def carve(labels: Tensor | None, n: int, val_fraction: float, test_fraction: float, seed: int) -> list[Tensor]:
    """Sorted positions [train, val, test]: each label's rows shuffled from ``seed``, then cut by the fractions.

    Rows without a label (-100) stay in training (they cannot be scored). Every label keeps one training row.
    """
    g = torch.Generator().manual_seed(seed)
    if labels is None:
        groups = [torch.arange(n)]
    else:
        groups = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    parts: list[list[Tensor]] = [[], [], []]
    for pos in groups:
        pos = pos[torch.randperm(len(pos), generator=g)]
        k = len(pos)
        if labels is not None and k and int(labels[pos[0]]) == IGNORE:
            parts[0].append(pos)
            continue
        n_test = round(test_fraction * k)
        n_val = round(val_fraction * k)
        spare = max(k - 1, 0)  # rows that may leave the training split
        n_test = min(n_test, spare)
        n_val = min(n_val, spare - n_test)
        parts[2].append(pos[:n_test])
        parts[1].append(pos[n_test : n_test + n_val])
        parts[0].append(pos[n_test + n_val :])
    return [torch.sort(torch.cat(p)).values if p else torch.empty(0, dtype=torch.int64) for p in parts]


def check_carved(positions: list[Tensor], n: int, val_fraction: float, test_fraction: float) -> None:
    """A fraction asked for must leave at least one row in its split."""
    for name, fraction, pos in (("val", val_fraction, positions[1]), ("test", test_fraction, positions[2])):
        if fraction > 0 and len(pos) == 0:
            raise ConfigError(
                f"data.params.{name}_fraction={fraction} of {n} training rows leaves no {name} rows; raise it or "
                f"give data.params.{name}: FILE"
            )
