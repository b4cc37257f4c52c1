"""Parity: the exported artifact, read back from disk, against the PyTorch student on real test inputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kdforge.data import DataBundle
from kdforge.evaluate.inputs import split_batch, student_inputs

TOLERANCE = 1e-4  # max |Δ| of float32 logits; above it the export is refused
PARITY_ROWS = 64  # one batch of the test split


class ParityError(Exception):
    """The artifact's outputs differ from the student's (not a user error: the CLI exits 1)."""


def parity_inputs(model: nn.Module, bundle: DataBundle, rows: int = PARITY_ROWS) -> dict[str, Tensor]:
    """The student's named inputs for one batch of real test samples."""
    return student_inputs(model, split_batch(bundle, rows))


def max_abs_diff(reference: Tensor, candidate: Tensor) -> float:
    """Largest absolute difference of two outputs of one shape, in float32."""
    if tuple(reference.shape) != tuple(candidate.shape):
        raise ParityError(f"exported output has shape {tuple(candidate.shape)}, the student's {tuple(reference.shape)}")
    return float((reference.float() - candidate.float()).abs().max()) if reference.numel() else 0.0


def check_parity(diff: float, artifact: str, rows: int, tolerance: float = TOLERANCE) -> None:
    """Refuse an artifact whose outputs differ from the student's by more than ``tolerance``."""
    if not diff <= tolerance:  # also catches NaN
        raise ParityError(
            f"parity check failed: {artifact} differs from the PyTorch student by max |Δ| = {diff:.3g} on {rows} "
            f"test rows (tolerance {tolerance:g}); nothing was written"
        )


def as_tensor(value: Any) -> Tensor:
    """A runtime's output (numpy array or tensor) as a float32 CPU tensor."""
    return torch.as_tensor(value).float()
