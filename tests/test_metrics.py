"""Golden values and cross-checks for kdforge.evaluate."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdforge.evaluate import (
    accuracy,
    agreement,
    classification_metrics,
    expected_calibration_error,
    latency_per_sample,
    mean_kl,
    model_profile,
    nll,
    parameter_count,
    predict,
    size_on_disk,
)


def _logits_from_probs(rows: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly the given probability rows (up to rounding)."""
    return torch.tensor(rows, dtype=torch.float64).log()


def test_accuracy_and_agreement_golden() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    assert accuracy(logits, labels) == pytest.approx(0.5)
    teacher = torch.tensor([[0.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    assert agreement(logits, teacher) == pytest.approx(0.75)


def test_kl_of_identical_logits_is_zero() -> None:
    logits = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    assert mean_kl(logits, logits.clone()) == pytest.approx(0.0, abs=1e-12)
    assert mean_kl(logits, logits.clone(), T=4.0) == pytest.approx(0.0, abs=1e-12)


def test_kl_two_class_golden() -> None:
    teacher = torch.tensor([[0.0, 0.0]])
    student = torch.tensor([[math.log(3.0), 0.0]])
    # p = (1/2, 1/2), q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
    assert mean_kl(teacher, student) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # At T = 2, q = (√3, 1) / (√3 + 1): KL = 1/2 ln((√3 + 1)² / (4√3)).
    r3 = math.sqrt(3.0)
    assert mean_kl(teacher, student, T=2.0) == pytest.approx(0.5 * math.log((r3 + 1) ** 2 / (4 * r3)), rel=1e-6)
    # Mean over rows: a zero-KL row halves it.
    both_t = torch.cat([teacher, teacher])
    both_s = torch.cat([student, teacher])
    assert mean_kl(both_t, both_s) == pytest.approx(0.25 * math.log(4 / 3), rel=1e-6)


def test_nll_matches_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 5, generator=g)
    labels = torch.randint(0, 5, (64,), generator=g)
    assert nll(logits, labels) == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert nll(_logits_from_probs([[0.25, 0.75]]), torch.tensor([0])) == pytest.approx(math.log(4.0))


def test_ece_golden_four_samples() -> None:
    logits = _logits_from_probs([[0.9, 0.1], [0.1, 0.9], [0.7, 0.3], [0.3, 0.7]])
    labels = torch.tensor([0, 0, 0, 1])
    # 5 bins of width 0.2: bin (0.8, 1] holds conf 0.9 twice with accuracy 1/2 -> 2/4 · 0.4 = 0.2;
    # bin (0.6, 0.8] holds conf 0.7 twice with accuracy 1 -> 2/4 · 0.3 = 0.15.
    assert expected_calibration_error(logits, labels, n_bins=5) == pytest.approx(0.35)
    # A single bin compares mean confidence 0.8 with mean accuracy 0.75.
    assert expected_calibration_error(logits, labels, n_bins=1) == pytest.approx(0.05)


def test_ece_confidence_one_goes_in_last_bin() -> None:
    logits = torch.tensor([[100.0, 0.0], [100.0, 0.0]], dtype=torch.float64)
    assert F.softmax(logits, dim=-1).max().item() == 1.0
    assert expected_calibration_error(logits, torch.tensor([0, 0])) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(logits, torch.tensor([0, 1])) == pytest.approx(0.5)


def test_ece_confidence_on_an_edge_goes_in_the_lower_bin() -> None:
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    # Bins (0, 0.5] and (0.5, 1]: conf 0.5 (right) falls in the first, conf 1.0 (wrong) in the second,
    # so ECE = 1/2 · |1 − 0.5| + 1/2 · |0 − 1| = 0.75 (it would be 0.25 if 0.5 joined the upper bin).
    assert expected_calibration_error(logits, labels, n_bins=2) == pytest.approx(0.75)
    assert _ece_numpy(logits.numpy(), labels.numpy(), 2) == pytest.approx(0.75)


def _ece_numpy(logits: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Reference ECE as a plain loop over (lo, hi] bins, after Guo et al. (2017)."""
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_numpy_loop(n_bins: int) -> None:
    g = torch.Generator().manual_seed(2)
    logits = 3.0 * torch.randn(1000, 10, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (1000,), generator=g)
    # Make the top class the label more often than chance so accuracy and confidence both vary.
    labels = torch.where(torch.rand(1000, generator=g) < 0.5, logits.argmax(-1), labels)
    expected = _ece_numpy(logits.numpy(), labels.numpy(), n_bins)
    assert expected_calibration_error(logits, labels, n_bins=n_bins) == pytest.approx(expected, rel=1e-9)


def test_classification_metrics_keys() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(20, 4, generator=g)
    labels = torch.randint(0, 4, (20,), generator=g)
    assert set(classification_metrics(logits, labels)) == {"accuracy", "nll", "ece"}
    with_teacher = classification_metrics(logits, labels, teacher_logits=logits)
    assert set(with_teacher) == {"accuracy", "nll", "ece", "agreement", "kl"}
    assert with_teacher["agreement"] == 1.0
    assert with_teacher["kl"] == pytest.approx(0.0, abs=1e-12)
    assert all(isinstance(v, float) for v in with_teacher.values())


@pytest.mark.parametrize(
    ("call", "shapes"),
    [
        (lambda: accuracy(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long)), ("(4, 3)", "(5,)")),
        (lambda: nll(torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.long)), ("(4, 3)", "(4, 1)")),
        (
            lambda: expected_calibration_error(torch.zeros(4), torch.zeros(4, dtype=torch.long)),
            ("(4,)", "(4,)"),
        ),
        (lambda: agreement(torch.zeros(4, 3), torch.zeros(4, 2)), ("(4, 3)", "(4, 2)")),
        (lambda: mean_kl(torch.zeros(3, 3), torch.zeros(4, 3)), ("(4, 3)", "(3, 3)")),
    ],
)
def test_mismatched_shapes_raise(call, shapes: tuple[str, str]) -> None:
    with pytest.raises(ValueError) as info:
        call()
    for shape in shapes:
        assert shape in str(info.value)


def test_size_on_disk_is_four_bytes_per_float32_param() -> None:
    model = nn.Linear(100, 50)
    params = parameter_count(model)
    assert params == 100 * 50 + 50
    size = size_on_disk(model)
    assert 4 * params < size < 4 * params + 1024  # the safetensors JSON header is small


def test_size_on_disk_stores_tied_weights_once() -> None:
    model = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 20, bias=False))
    model[1].weight = model[0].weight
    assert parameter_count(model) == 160
    assert 4 * 160 < size_on_disk(model) < 4 * 160 + 1024


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def test_latency_positive_and_batching_amortises() -> None:
    model = _mlp().train()
    b1 = latency_per_sample(model, torch.randn(1, 32), batch_size=1)
    b256 = latency_per_sample(model, torch.randn(1, 32), batch_size=256)
    assert isinstance(b1, float) and b1 > 0
    assert b1 > b256 > 0
    assert model.training  # the training flag is restored


def test_latency_stops_early_but_times_three_repeats() -> None:
    calls = []

    class Counting(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            return x

    latency_per_sample(Counting(), torch.randn(2, 4), batch_size=2, warmup=1, repeats=100, max_seconds=0.0)
    assert len(calls) == 1 + 3


def test_model_profile_keys() -> None:
    profile = model_profile(_mlp(), torch.randn(8, 32))
    assert set(profile) == {"params", "size_bytes", "latency_ms_b1", "latency_ms_b256"}
    assert profile["params"] == 32 * 64 + 64 + 64 * 10 + 10
    assert profile["latency_ms_b1"] > profile["latency_ms_b256"] > 0


class _DictDataset(Dataset):
    """Tiny labelled or unlabelled dataset yielding dict samples."""

    def __init__(self, n: int, labelled: bool) -> None:
        self.x = torch.randn(n, 32, generator=torch.Generator().manual_seed(4))
        self.labelled = labelled

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        sample: dict[str, torch.Tensor | int] = {"input": self.x[i], "index": i}
        if self.labelled:
            sample["label"] = i % 10
        return sample


def test_predict_shapes_and_restores_training() -> None:
    model = nn.Sequential(nn.Linear(32, 64), nn.Dropout(0.5), nn.Linear(64, 10)).train()
    loader = DataLoader(_DictDataset(23, labelled=True), batch_size=5, shuffle=True)
    logits, labels, index = predict(model, loader)
    assert logits.shape == (23, 10) and logits.dtype == torch.float32 and logits.device.type == "cpu"
    assert labels is not None and labels.shape == (23,)
    assert sorted(index.tolist()) == list(range(23))
    assert torch.equal(labels, index % 10)  # labels stay aligned with indices after shuffling
    assert model.training
    # Eval mode: dropout is off, so logits equal a direct forward of the same samples.
    with torch.no_grad():
        expected = model.eval()(loader.dataset.x[index])
    torch.testing.assert_close(logits, expected)


def test_predict_without_labels() -> None:
    model = _mlp().eval()
    logits, labels, index = predict(model, DataLoader(_DictDataset(7, labelled=False), batch_size=3))
    assert logits.shape == (7, 10) and labels is None and index.tolist() == list(range(7))
    assert not model.training
