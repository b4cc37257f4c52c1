"""Linear centered kernel alignment (CKA): how alike two layers' representations of the same samples are.

``linear_cka`` is Kornblith et al. 2019 ("Similarity of Neural Network Representations Revisited"): with column-
centred features X (n, p) and Y (n, q), CKA = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)) for K = XXᵀ, L = YYᵀ, which
for linear kernels is ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F). It is invariant to orthogonal transforms and isotropic scaling
of either side, 1 for identical representations. It needs every sample at once.

``MinibatchCKA`` is Nguyen, Raghu & Kornblith 2021 ("Do Wide and Deep Networks Learn the Same Things?", eq. 3-4):
the unbiased HSIC estimator (Song et al. 2012) summed over minibatches, CKA = Σ HSIC₁(K_i, L_i) / sqrt(Σ HSIC₁(K_i,
K_i) · Σ HSIC₁(L_i, L_i)). It keeps only a few sums per layer pair, and the unbiased estimator makes the value
independent of the batch size (the biased one's bias would not average out over batches). ``kdforge diagnose``
uses this form. Everything is computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from kdforge.errors import ShapeMismatchError

MIN_BATCH = 4  # the unbiased HSIC estimator divides by n(n-3): a batch needs at least 4 samples


def _rows(x: Tensor, name: str) -> Tensor:
    """A representation as an (n, features) float64 matrix: each sample's tensor flattened."""
    if x.dim() < 2:
        raise ShapeMismatchError(f"CKA: {name} has shape {tuple(x.shape)}; expected (samples, features...)")
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of two representations of the same n samples (n, ...) — nan when either one is constant."""
    a, b = _rows(x, "x"), _rows(y, "y")
    if a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise ShapeMismatchError(
            f"CKA: x {tuple(x.shape)} and y {tuple(y.shape)}: expected the same number (≥ 2) of samples"
        )
    a, b = a - a.mean(0), b - b.mean(0)
    norm_a, norm_b = torch.linalg.norm(a), torch.linalg.norm(b)
    if norm_a == 0 or norm_b == 0:
        return math.nan
    # Scaled to unit norm first (CKA is scale-invariant): fourth powers of large activations cannot overflow.
    a, b = a / norm_a, b / norm_b
    n, p, q = a.shape[0], a.shape[1], b.shape[1]
    if n * n * (p + q) < n * (p * q + p * p + q * q):  # the n × n Gram matrices are the cheaper route
        k, l_ = a @ a.T, b @ b.T
        num, den = (k * l_).sum(), torch.linalg.norm(k) * torch.linalg.norm(l_)
    else:
        num = torch.linalg.norm(b.T @ a) ** 2
        den = torch.linalg.norm(a.T @ a) * torch.linalg.norm(b.T @ b)
    return float(num / den)


def unbiased_hsic(k: Tensor, l_: Tensor) -> Tensor:
    """The unbiased HSIC estimator HSIC₁ of two n × n kernel matrices (Song et al. 2012; n ≥ 4)."""
    n = k.shape[0]
    if n < MIN_BATCH or tuple(k.shape) != (n, n) or tuple(l_.shape) != (n, n):
        raise ShapeMismatchError(f"HSIC: kernels {tuple(k.shape)} and {tuple(l_.shape)}; expected n × n with n ≥ 4")
    k = k.to(torch.float64) * (1 - torch.eye(n, dtype=torch.float64, device=k.device))
    l_ = l_.to(torch.float64) * (1 - torch.eye(n, dtype=torch.float64, device=l_.device))
    trace = (k * l_).sum()  # tr(K̃ L̃) for symmetric kernels
    sums = k.sum() * l_.sum() / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (k.sum(0) @ l_.sum(0))  # 1ᵀ K̃ L̃ 1
    return (trace + sums - cross) / (n * (n - 3))


def _gram(a: Tensor) -> Tensor:
    """The linear kernel a aᵀ of one batch; exactly zero for a constant layer, whose HSIC would be rounding noise."""
    spread = (a - a.mean(0)).abs().max()
    if spread <= 1e-12 * a.abs().max() or spread == 0:
        return torch.zeros(a.shape[0], a.shape[0], dtype=a.dtype, device=a.device)
    return a @ a.T


class MinibatchCKA:
    """Linear CKA of every (row layer, column layer) pair, accumulated over minibatches with the unbiased HSIC."""

    def __init__(self, rows: Sequence[str], cols: Sequence[str]):
        self.rows, self.cols = list(rows), list(cols)
        self.xy = torch.zeros(len(self.rows), len(self.cols), dtype=torch.float64)
        self.xx = torch.zeros(len(self.rows), dtype=torch.float64)
        self.yy = torch.zeros(len(self.cols), dtype=torch.float64)
        self.batches = 0
        self.samples = 0
        self.skipped = 0  # batches under MIN_BATCH samples (a loader's short last batch)

    def update(self, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
        """Add one batch: the row layers' tensors then the column layers', each (n, ...) for the same n samples."""
        if len(xs) != len(self.rows) or len(ys) != len(self.cols):
            raise ShapeMismatchError(
                f"CKA: {len(xs)} row and {len(ys)} column tensors; expected {len(self.rows)} and {len(self.cols)}"
            )
        sizes = {int(t.shape[0]) for t in [*xs, *ys]}
        if len(sizes) != 1:
            raise ShapeMismatchError(f"CKA: the layers hold different numbers of samples {sorted(sizes)} in one batch")
        n = sizes.pop()
        if n < MIN_BATCH:
            self.skipped += 1
            return
        grams_x = [_gram(_rows(t, "a row layer")) for t in xs]
        grams_y = [_gram(_rows(t, "a column layer")) for t in ys]
        for i, k in enumerate(grams_x):
            self.xx[i] += unbiased_hsic(k, k).cpu()
            for j, l_ in enumerate(grams_y):
                self.xy[i, j] += unbiased_hsic(k, l_).cpu()
        for j, l_ in enumerate(grams_y):
            self.yy[j] += unbiased_hsic(l_, l_).cpu()
        self.batches += 1
        self.samples += n

    def value(self) -> Tensor:
        """The (rows, cols) CKA matrix so far; nan where a layer's self-similarity is not positive (constant)."""
        den = torch.sqrt(self.xx.clamp(min=0)[:, None] * self.yy.clamp(min=0)[None, :])
        return torch.where(den > 0, self.xy / den.clamp(min=1e-300), torch.full_like(den, math.nan))
