"""Transformers models from a local folder, a GGUF file or a config mapping: offline, never remote code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from torch import nn

from kdforge.errors import ConfigError
from kdforge.models.hf.checks import check_labels
from kdforge.models.hf.gguf import unsupported

WHERE = "model 'hf'"
TASKS = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
    "encoder": "AutoModel",
}
# No hub access and no code from a model folder, whatever the environment says.
OFFLINE: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}


def float32() -> dict[str, Any]:
    """The from_pretrained keyword asking for float32 weights (``dtype`` since transformers 4.56)."""
    import torch
    import transformers
    from packaging.version import Version

    # Checkpoints may be stored in bf16/fp16, which transformers 5 keeps by default; kdforge trains in float32.
    # Asked at load time, since a GGUF model (marked as quantized) refuses a later .float().
    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: torch.float32}


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def auto_class(task: str) -> Any:
    """The transformers Auto class of ``task``."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"{WHERE} needs `pip install transformers` (kdforge[text])") from None
    return getattr(transformers, TASKS[task])


def require_folder(path: Path) -> None:
    """``path`` must be a local transformers folder with its config.json."""
    if not path.exists():
        raise ConfigError(f"{WHERE}: params.path {str(path)!r} does not exist; expected a local transformers folder")
    if not path.is_dir():
        raise ConfigError(f"{WHERE}: params.path {str(path)!r} is a file; expected a transformers model folder")
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{WHERE}: params.path {str(path)!r} has no config.json; expected a transformers model folder "
            "(config.json + model.safetensors), or a .gguf file with params.gguf_file"
        )


def pickled_code(folder: Path, where: str) -> ConfigError:
    """The error for a folder whose PyTorch weight file (pytorch_model.bin) pickles more than tensors."""
    files = sorted(p.name for p in folder.glob("*.bin")) or ["its PyTorch weight file"]
    return ConfigError(
        f"{where}: {str(folder / files[0])!r} holds pickled objects other than tensors (never run); expected "
        "model.safetensors or a tensors-only pytorch_model.bin"
    )


def custom_code(err: BaseException, path: Path, where: str) -> ConfigError | None:
    """The error for a folder asking to run its own code (an ``auto_map`` with trust_remote_code=False), else None."""
    if "trust_remote_code" not in str(err):
        return None
    return ConfigError(
        f"{where}: {str(path)!r} asks to run its own Python code (auto_map in its config); kdforge never runs code "
        "from a model folder: expected a model and tokenizer class that transformers itself implements"
    )


def guarded(load: Any, folder: Path, gguf_file: str | None, where: str = WHERE) -> Any:
    """Run a transformers load, turning its errors into one-line ConfigErrors naming the folder or GGUF file."""
    try:
        return load()
    except pickle.UnpicklingError:  # transformers reads .bin weights with weights_only=True: code is refused
        raise pickled_code(folder, where) from None
    except ValueError as err:
        if gguf_file is not None and "not supported" in str(err):
            raise unsupported(folder / gguf_file, err) from None
        refused = custom_code(err, folder, where)
        if refused is not None:
            raise refused from None
        raise ConfigError(f"{where}: cannot load {str(folder / (gguf_file or ''))!r}: {_one_line(err)}") from None
    except (OSError, KeyError, TypeError) as err:
        raise ConfigError(f"{where}: cannot load {str(folder / (gguf_file or ''))!r}: {_one_line(err)}") from None


def _has_trained_head(config: Any) -> bool:
    # A base checkpoint (BertModel, MiniLM) gets a fresh head sized to the data; a classifier keeps its own.
    return any(str(a).endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


def from_folder(task: str, folder: Path, num_classes: int, gguf_file: str | None = None) -> nn.Module:
    """Load ``folder`` (or its GGUF file) for ``task`` in float32; a trained head must match the data's classes."""
    from transformers import AutoConfig

    kwargs = dict(OFFLINE, **({"gguf_file": gguf_file} if gguf_file else {}))
    config = guarded(lambda: AutoConfig.from_pretrained(str(folder), **kwargs), folder, gguf_file)
    if task == "sequence_classification":
        if _has_trained_head(config):
            check_labels(config, num_classes, f"{WHERE}: params.path {str(folder)!r}")
        else:
            kwargs["num_labels"] = num_classes
    return guarded(lambda: auto_class(task).from_pretrained(str(folder), **kwargs, **float32()), folder, gguf_file)


def from_config(task: str, config: Any, num_classes: int) -> nn.Module:
    """A freshly initialised model from a config mapping (``AutoConfig.for_model``, no download)."""
    if not isinstance(config, dict) or "model_type" not in config:
        got = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise ConfigError(f"{WHERE}: params.config needs a model_type (e.g. bert, llama); got {got}")
    from transformers import AutoConfig

    kwargs = dict(config)
    model_type = kwargs.pop("model_type")
    if task == "sequence_classification":
        labels = kwargs.setdefault("num_labels", num_classes)
        if labels != num_classes:
            raise ConfigError(
                f"{WHERE}: params.config.num_labels={labels} but the data has {num_classes} classes; "
                "expected them equal (or leave num_labels out)"
            )
    if task == "causal_lm":
        kwargs.setdefault("vocab_size", num_classes)
    try:
        # Recent transformers check field types through huggingface_hub's strict dataclasses (hidden_size: 1.5).
        from huggingface_hub.errors import StrictDataclassError as FieldError
    except ImportError:
        FieldError = ValueError
    try:
        built = AutoConfig.for_model(model_type, **kwargs)
    except (ValueError, KeyError, TypeError, FieldError) as err:
        raise ConfigError(f"{WHERE}: params.config is not a valid {model_type!r} config: {_one_line(err)}") from None
    try:
        return auto_class(task).from_config(built)
    except (ValueError, KeyError, TypeError, RuntimeError, ArithmeticError) as err:
        # Sizes the config accepted and the layers cannot take (a negative vocabulary: RuntimeError; hidden_size 0:
        # ZeroDivisionError in the rotary embedding) are the config's mistake too.
        raise ConfigError(
            f"{WHERE}: params.config: no {task} model for {model_type!r}: {type(err).__name__}: {_one_line(err)}"
        ) from None
