"""PHI-S feature standardization (Ranzinger et al. 2024, "PHI-S: Distribution Balancing for Label-Free Multi-Teacher
Distillation"): pure functions on tensors, float64 inside.

Fit on samples X (N, D): μ = mean(X), Σ = cov(X) = U Λ Uᵀ, and x' = (1/σ) · H Uᵀ (x − μ) with H the normalised
Hadamard matrix and σ = sqrt(mean(Λ)) = sqrt(trace(Σ)/D). Rotating the PCA basis by H spreads every eigenvalue evenly
over all dimensions (each entry of H is ±1/√D), so cov(x') = H Λ Hᵀ / σ² has every diagonal entry equal to
Σ_j λ_j / (D σ²) = 1: one scalar makes every dimension the same scale, unlike per-dimension standardization.

Confirmed against the authors' reference code (NVlabs/RADIO, examples/common/phi_s.py): mean-centre, ``torch.cov``
(the N−1 estimator), ``eigh``, negative eigenvalues clamped to zero, normaliser ``e.mean().sqrt()``, whitening matrix
``(1/normaliser) · H @ U.T``. Their Hadamard helper builds Sylvester (powers of two) or Paley matrices and falls back
to a random orthogonal matrix; here a D that is not a power of two uses H = I instead (PCA rotation with the same one
scalar: trace/D is still 1, but the diagonal is no longer flat), recorded as ``hadamard=False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from kdforge.errors import ConfigError


@dataclass(frozen=True)
class PhiS:
    """Fitted statistics: the mean (D,), the whitening matrix (D, D) = H Uᵀ / σ, and whether H is a Hadamard matrix."""

    mean: Tensor
    whiten: Tensor
    hadamard: bool

    def to(self, device: torch.device | str) -> PhiS:
        """The same statistics on ``device``."""
        return PhiS(self.mean.to(device), self.whiten.to(device), self.hadamard)


def is_power_of_two(d: int) -> bool:
    """Whether ``d`` is 1, 2, 4, 8, ..."""
    return d >= 1 and d & (d - 1) == 0


def hadamard(d: int) -> Tensor:
    """The normalised Sylvester Hadamard matrix of size ``d`` (a power of two), float64: orthogonal, entries ±1/√d."""
    if not is_power_of_two(d):
        raise ValueError(f"hadamard: Sylvester's construction needs a power of two, got {d}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return h / d**0.5


def fit(x: Tensor) -> PhiS:
    """PHI-S statistics of samples ``x`` (N, ...) flattened to (N, D)."""
    flat = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    n, d = flat.shape
    if n < 2:
        raise ConfigError(f"PHI-S needs at least 2 samples to estimate a covariance, got {n}")
    if not torch.isfinite(flat).all():
        raise ConfigError("PHI-S: the features fitted on hold NaN or inf values")
    mean = flat.mean(dim=0)
    cov = torch.cov((flat - mean).T).reshape(d, d)  # reshape: D=1 gives a 0-d tensor
    eigenvalues, u = torch.linalg.eigh(cov)
    # Rounding can make a zero eigenvalue slightly negative; a variance is never below zero.
    eigenvalues = eigenvalues.clamp(min=0)
    power = is_power_of_two(d)
    h = hadamard(d) if power else torch.eye(d, dtype=torch.float64)
    sigma = eigenvalues.mean().sqrt()
    # Constant features (σ = 0) stay zero after centring; dividing by 1 keeps them finite.
    scale = 1.0 / sigma if sigma > 0 else torch.ones((), dtype=torch.float64)
    return PhiS(mean=mean, whiten=scale * (h @ u.T), hadamard=power)


def apply(stats: PhiS, x: Tensor) -> Tensor:
    """``x`` (N, ...) standardized: each flattened row becomes W (row − μ); same shape and dtype as ``x``."""
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != stats.mean.shape[0]:
        raise ConfigError(
            f"PHI-S statistics were fitted on {stats.mean.shape[0]} features per sample, but this tensor has "
            f"{flat.shape[1]} (shape {tuple(x.shape)})"
        )
    mean, whiten = stats.mean.to(flat.device), stats.whiten.to(flat.device)
    out = (flat.to(torch.float64) - mean) @ whiten.T
    return out.to(x.dtype).reshape(x.shape)


def to_state(stats: PhiS, prefix: str) -> dict[str, Tensor]:
    """The statistics as named tensors for a checkpoint: ``{prefix}mean``, ``{prefix}whiten``, ``{prefix}hadamard``."""
    flag = torch.tensor(stats.hadamard)
    return {f"{prefix}mean": stats.mean, f"{prefix}whiten": stats.whiten, f"{prefix}hadamard": flag}


def from_state(state: Mapping[str, Tensor], prefix: str) -> PhiS:
    """The statistics ``to_state`` wrote under ``prefix``."""
    return PhiS(
        mean=state[f"{prefix}mean"].to(torch.float64),
        whiten=state[f"{prefix}whiten"].to(torch.float64),
        hadamard=bool(state[f"{prefix}hadamard"]),
    )
