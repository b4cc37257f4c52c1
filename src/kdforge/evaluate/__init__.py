"""Evaluation: classification metrics, model size and speed, and batch prediction."""

from kdforge.evaluate.metrics import (
    accuracy,
    agreement,
    classification_metrics,
    expected_calibration_error,
    mean_kl,
    nll,
)
from kdforge.evaluate.model_stats import latency_per_sample, model_profile, parameter_count, size_on_disk
from kdforge.evaluate.predict import predict
from kdforge.evaluate.split_metrics import test_metrics

__all__ = [
    "accuracy",
    "agreement",
    "classification_metrics",
    "expected_calibration_error",
    "latency_per_sample",
    "mean_kl",
    "model_profile",
    "nll",
    "parameter_count",
    "predict",
    "size_on_disk",
    "test_metrics",
]
