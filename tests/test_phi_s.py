"""PHI-S standardization: the Hadamard rotation, isotropy of the result, the fallback, and the checkpoint form."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from kdforge.errors import ConfigError
from kdforge.teachers.standardize import PhiS, apply, fit, from_state, hadamard, is_power_of_two, to_state


def correlated(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Samples with a shifted mean and very unequal, correlated per-dimension variances."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) * torch.logspace(-1, 1, d, dtype=torch.float64)
    return z @ mix + torch.arange(d, dtype=torch.float64) * 3.0


@pytest.mark.parametrize("d", [1, 2, 4, 8, 16, 64])
def test_hadamard_is_orthogonal_with_equal_magnitude_entries(d: int) -> None:
    h = hadamard(d)
    assert h.dtype == torch.float64
    assert torch.allclose(h @ h.T, torch.eye(d, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(h.abs(), torch.full((d, d), d**-0.5, dtype=torch.float64))


def test_hadamard_needs_a_power_of_two() -> None:
    assert [d for d in range(1, 20) if is_power_of_two(d)] == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError, match="power of two"):
        hadamard(6)


@pytest.mark.parametrize("d", [8, 16])
def test_standardized_covariance_is_isotropic(d: int) -> None:
    x = correlated(500, d)
    before = torch.cov(x.T).diagonal()
    assert before.max() / before.min() > 10  # the input is far from isotropic: the test can fail
    stats = fit(x)
    assert stats.hadamard
    y = apply(stats, x)
    cov = torch.cov(y.T)
    assert torch.allclose(cov.diagonal(), torch.ones(d, dtype=torch.float64), atol=1e-6)
    assert abs(float(cov.trace()) / d - 1.0) < 1e-9
    assert torch.allclose(y.mean(dim=0), torch.zeros(d, dtype=torch.float64), atol=1e-9)


def test_scale_is_the_root_mean_eigenvalue() -> None:
    x = correlated(300, 8, seed=3)
    stats = fit(x)
    # W = H Uᵀ / σ with H Uᵀ orthogonal, so ‖W‖_F² = D / σ², and σ² = mean eigenvalue = trace(Σ) / D.
    sigma2 = 8 / float((stats.whiten**2).sum())
    assert sigma2 == pytest.approx(float(torch.cov(x.T).trace()) / 8, rel=1e-10)
    rotation = stats.whiten * sigma2**0.5
    assert torch.allclose(rotation @ rotation.T, torch.eye(8, dtype=torch.float64), atol=1e-10)


def test_other_sizes_fall_back_to_one_scalar_on_the_pca_basis() -> None:
    x = correlated(400, 6, seed=1)
    stats = fit(x)
    assert not stats.hadamard
    y = apply(stats, x)
    cov = torch.cov(y.T)
    assert abs(float(cov.trace()) / 6 - 1.0) < 1e-9
    assert torch.allclose(y.mean(dim=0), torch.zeros(6, dtype=torch.float64), atol=1e-9)
    # Without the Hadamard rotation the PCA axes keep their unequal variances (and become uncorrelated).
    assert float(cov.diagonal().max() / cov.diagonal().min()) > 10
    assert torch.allclose(cov, torch.diag(cov.diagonal()), atol=1e-9)


def test_shape_and_dtype_are_kept_and_float32_is_accurate() -> None:
    x = correlated(256, 16, seed=2).float().reshape(256, 2, 8)
    stats = fit(x)
    y = apply(stats, x)
    assert y.shape == x.shape and y.dtype == torch.float32
    cov = torch.cov(y.reshape(256, 16).double().T)
    assert torch.allclose(cov.diagonal(), torch.ones(16, dtype=torch.float64), atol=1e-4)


def test_constant_features_stay_finite() -> None:
    x = torch.ones(10, 4, dtype=torch.float64)
    y = apply(fit(x), x)
    assert torch.equal(y, torch.zeros(10, 4, dtype=torch.float64))


def test_bad_inputs_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="at least 2 samples"):
        fit(torch.randn(1, 4))
    with pytest.raises(ConfigError, match="NaN or inf"):
        fit(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ConfigError, match="fitted on 4 features"):
        apply(fit(torch.randn(5, 4)), torch.randn(3, 5))


def test_state_round_trip_through_safetensors(tmp_path) -> None:
    for d in (8, 6):
        stats = fit(correlated(64, d, seed=d))
        path = tmp_path / f"stats{d}.safetensors"
        save_file(to_state(stats, "phi_s.0:layer."), str(path))
        back = from_state(load_file(str(path)), "phi_s.0:layer.")
        assert isinstance(back, PhiS) and back.hadamard == stats.hadamard
        assert torch.equal(back.mean, stats.mean) and torch.equal(back.whiten, stats.whiten)
        x = correlated(5, d, seed=9)
        assert torch.equal(apply(back, x), apply(stats, x))
