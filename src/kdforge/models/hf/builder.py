"""`hf`: a Hugging Face transformers model from a local folder, a GGUF file or a config mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdforge.errors import ConfigError
from kdforge.models.hf.checks import check_length, check_vocabulary
from kdforge.models.hf.gguf import gguf_location
from kdforge.models.hf.head import load_head, read_head_info
from kdforge.models.hf.load import TASKS, WHERE, from_config, from_folder, require_folder
from kdforge.models.hf.pooled import POOLINGS, PooledClassifier
from kdforge.registry import MODELS


def _check_params(path: str | None, config: Any, task: str, pooling: str, gguf_file: str | None) -> None:
    if task not in TASKS:
        raise ConfigError(f"{WHERE}: params.task={task!r}; expected one of {', '.join(TASKS)}")
    if pooling not in POOLINGS:
        raise ConfigError(f"{WHERE}: params.pooling={pooling!r}; expected one of {', '.join(POOLINGS)}")
    if (path is None) == (config is None):
        got = "both" if path is not None else "neither"
        raise ConfigError(f"{WHERE}: give exactly one of params.path (a local folder) or params.config; got {got}")
    if gguf_file is not None and path is None:
        raise ConfigError(f"{WHERE}: params.gguf_file={gguf_file!r} needs params.path (the folder holding it)")


def _load(task: str, path: Path, num_classes: int, gguf_file: str | None) -> nn.Module:
    if gguf_file is None and path.suffix != ".gguf":
        require_folder(path)
        return from_folder(task, path, num_classes)
    if not path.exists():
        raise ConfigError(f"{WHERE}: params.path {str(path)!r} does not exist; expected a .gguf file or its folder")
    folder, name = gguf_location(path, gguf_file)
    return from_folder(task, folder, num_classes, name)


def _pooled(encoder: nn.Module, num_classes: int, pooling: str, path: Path | None) -> nn.Module:
    model = PooledClassifier(encoder, num_classes, pooling)
    info = read_head_info(path) if path is not None and path.is_dir() else None
    if info is not None:
        saved = info.get("pooling")
        if saved != pooling:
            raise ConfigError(
                f"{WHERE}: params.pooling={pooling!r} but {str(path)!r} was trained with pooling {saved!r}; "
                f"expected params.pooling: {saved}"
            )
        load_head(path, model.head, f"{WHERE}: params.path")
    return model


@MODELS.register("hf")
def hf(
    num_classes: int,
    input_shape: tuple[int, ...],
    path: str | None = None,
    config: dict[str, Any] | None = None,
    task: str = "sequence_classification",
    pooling: str = "mean",
    gguf_file: str | None = None,
) -> nn.Module:
    """A transformers model (folder, GGUF or config): sequence classifier, causal LM, or encoder + pooling + head."""
    if len(input_shape) != 1:
        raise ConfigError(f"{WHERE} takes token ids of shape (max_len,), got input_shape {input_shape}")
    _check_params(path, config, task, pooling, gguf_file)
    folder = Path(path).expanduser() if path is not None else None
    if folder is not None:
        model = _load(task, folder, num_classes, gguf_file)
    else:
        model = from_config(task, config, num_classes)
    check_length(model.config, input_shape[0], WHERE)
    if task == "causal_lm":
        check_vocabulary(model, num_classes, WHERE)
    if task == "encoder":
        return _pooled(model, num_classes, pooling, folder)
    return model
