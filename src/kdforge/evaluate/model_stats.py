"""Size and speed of a model: parameter count, bytes on disk and per-sample latency."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor, nn


def parameter_count(model: nn.Module) -> int:
    """Number of scalar parameters, counting tied parameters once."""
    # model.parameters() already yields each shared Parameter a single time.
    return sum(p.numel() for p in model.parameters())


def size_on_disk(model: nn.Module) -> int:
    """Bytes of the model's state_dict serialised with safetensors."""
    tensors: dict[str, Tensor] = {}
    seen: set[tuple[Any, ...]] = set()
    for name, value in model.state_dict().items():
        if not isinstance(value, Tensor):
            continue  # extra state that is not a tensor is not written by safetensors
        # Tied weights appear under several names with the same view; store them once, as save_model does.
        key = (
            value.device,
            value.untyped_storage().data_ptr(),
            value.storage_offset(),
            tuple(value.shape),
            value.stride(),
            value.dtype,
        )
        if value.numel() > 0 and key in seen:
            continue
        seen.add(key)
        # safetensors refuses non-contiguous tensors and tensors that share storage, so write clones.
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    return len(save(tensors))


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter, defaulting to CPU float32."""
    for p in model.parameters():
        return p.device, (p.dtype if p.is_floating_point() else torch.float32)
    return torch.device("cpu"), torch.float32


def _sync(device: torch.device) -> None:
    """Wait for queued kernels so that wall time covers the whole forward."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_batch(model: nn.Module, example: Tensor, batch_size: int) -> Tensor:
    """``batch_size`` rows of ``example`` (cycled when it has fewer) on the model's device and float dtype."""
    if example.ndim < 1 or len(example) == 0:
        raise ValueError(f"example must be a non-empty batch of inputs, got shape {tuple(example.shape)}")
    device, dtype = _model_device_dtype(model)
    rows = torch.arange(batch_size) % len(example)
    # Token ids and other integer inputs keep their dtype; only float inputs follow the model's precision.
    return example[rows].to(device, dtype=dtype if example.is_floating_point() else example.dtype)


def latency_per_sample(
    model: nn.Module,
    example: Tensor,
    batch_size: int,
    warmup: int = 3,
    repeats: int = 10,
    max_seconds: float = 5.0,
) -> float:
    """Median wall-clock seconds per sample of one eval-mode forward on ``batch_size`` rows of ``example``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # Real inputs, not random floats: token-id models need valid integer ids (an embedding rejects floats).
    x = _as_batch(model, example, batch_size)
    device = x.device
    was_training = model.training
    model.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            _sync(device)
            start = time.perf_counter()
            # Always time at least 3 forwards so the median means something, even for slow models.
            for i in range(max(repeats, 3)):
                if i >= 3 and time.perf_counter() - start > max_seconds:
                    break
                t0 = time.perf_counter()
                model(x)
                _sync(device)
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return statistics.median(times) / batch_size


def model_profile(model: nn.Module, example: Tensor, large_batch: int = 256) -> dict[str, float | int]:
    """Parameter count, safetensors size and per-sample latency in ms at batch 1 and ``large_batch``.

    ``example`` is a batch of real inputs from the run's data (e.g. ``bundle.test.inputs[:256]``); its rows are
    cycled to fill the large batch. Causal LMs use a small one: 256 rows of full logits would take gigabytes.
    """
    return {
        "params": parameter_count(model),
        "size_bytes": size_on_disk(model),
        "latency_ms_b1": 1e3 * latency_per_sample(model, example, batch_size=1),
        f"latency_ms_b{large_batch}": 1e3 * latency_per_sample(model, example, batch_size=large_batch),
    }
