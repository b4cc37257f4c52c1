"""The linear head kdforge puts on an encoder, stored beside the encoder's own files in an HF folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from kdforge.errors import ConfigError
from kdforge.weights import read_safetensors

HEAD_WEIGHTS = "kdforge_head.safetensors"
HEAD_CONFIG = "kdforge_head.json"


def write_head(folder: str | Path, head: nn.Linear, info: dict[str, Any]) -> None:
    """Write ``head``'s weights and ``info`` (kind, pooling, sizes) into ``folder``."""
    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in head.state_dict().items()}
    save_file(tensors, str(folder / HEAD_WEIGHTS))
    record = {**info, "num_classes": head.out_features, "hidden_size": head.in_features}
    (folder / HEAD_CONFIG).write_text(json.dumps(record, indent=2) + "\n")


def read_head_info(folder: str | Path) -> dict[str, Any] | None:
    """The head record of an exported folder, None for a folder without a kdforge head."""
    path = Path(folder) / HEAD_CONFIG
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{str(path)!r} is not valid JSON ({err}); expected a kdforge head record") from None
    if not isinstance(info, dict):
        raise ConfigError(f"{str(path)!r} holds a {type(info).__name__}; expected a kdforge head record (a mapping)")
    return info


def load_head(folder: str | Path, head: nn.Linear, where: str) -> bool:
    """Load a saved head into ``head`` when ``folder`` has one; its class count must match. True when loaded."""
    path = Path(folder) / HEAD_WEIGHTS
    if not path.is_file():
        return False
    weights = read_safetensors(path, where)
    shape = tuple(weights["weight"].shape) if "weight" in weights else None
    if shape != tuple(head.weight.shape):
        raise ConfigError(
            f"{where}: {str(path)!r} is a head of shape {shape} (classes, hidden) but the data needs "
            f"{tuple(head.weight.shape)}; expected a head trained on data with {head.out_features} classes"
        )
    head.load_state_dict(weights)
    return True
