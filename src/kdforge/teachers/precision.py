"""A frozen teacher's weights in a smaller number format: bf16/fp16 casts, or int8 dynamic quantization on CPU."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from kdforge.errors import ConfigError

FLOAT_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _output_head_name(model: nn.Module) -> str | None:
    """The module path of a language model's output head (kept in float: the chunked loss reads its weight)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    for name, module in model.named_modules():
        if head is not None and module is head:
            return name
    return None


def quantize_int8(model: nn.Module) -> nn.Module:
    """Every nn.Linear but the output head as int8 weights with float activations (PyTorch dynamic quantization).

    Runs on CPU only (the quantized kernels are fbgemm/qnnpack). The output head stays float: a causal LM's loss
    builds the teacher's logits from its weight a chunk at a time.
    """
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    skip = _output_head_name(model)
    spec = {n: default_dynamic_qconfig for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != skip}
    if not spec:
        raise ConfigError("teacher.dtype: int8 quantizes nn.Linear layers, and this teacher has none besides its head")
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the eager dynamic path still works in this torch.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model.cpu(), spec, dtype=torch.qint8)


def with_precision(model: nn.Module, dtype: str) -> tuple[nn.Module, torch.dtype | None]:
    """``model`` in ``dtype`` ("float32", "bfloat16", "float16" or "int8") and the float dtype its inputs take."""
    if dtype == "int8":
        return quantize_int8(model), None
    if dtype not in FLOAT_DTYPES:
        raise ConfigError(f"teacher.dtype {dtype!r} is not one of float32, bfloat16, float16, int8")
    cast = FLOAT_DTYPES[dtype]
    return (model.to(cast) if cast is not None else model), cast


def teacher_device(name: str | None) -> torch.device | None:
    """The device ``teacher.device`` names, checked to exist on this machine (None: the student's)."""
    if name is None:
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"teacher.device {name!r} is not a device name (expected e.g. cpu, cuda:1)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"teacher.device {name!r}: this machine has {count} CUDA device(s)")
    elif device.type not in ("cpu", "mps", "xpu"):
        raise ConfigError(f"teacher.device {name!r}: expected cpu or cuda[:N]")
    return device
