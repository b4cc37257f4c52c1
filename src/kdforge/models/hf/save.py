"""HF students as Hugging Face folders: config.json + model.safetensors (+ kdforge's head, + the tokenizer)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from torch import nn

from kdforge.errors import ConfigError
from kdforge.models.hf.head import load_head, read_head_info, write_head
from kdforge.models.hf.load import OFFLINE, auto_class, float32, guarded
from kdforge.models.hf.pooled import PooledClassifier
from kdforge.models.hf.sentence import SentenceClassifier, load_sentence_transformer

# What an HF folder's config.json `architectures` says → the task whose Auto class loads it back.
_ARCHITECTURE_TASKS = (("ForSequenceClassification", "sequence_classification"), ("ForCausalLM", "causal_lm"))


def _pretrained(model: nn.Module) -> bool:
    # A model can only be a transformers model once transformers is imported: never pay its import to find out.
    if "transformers" not in sys.modules:
        return False
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def is_hf_student(model: nn.Module) -> bool:
    """Whether ``model`` can be written as an HF folder: a transformers model, or kdforge's wrapper around one."""
    return isinstance(model, (PooledClassifier, SentenceClassifier)) or _pretrained(model)


def save_hf_folder(model: nn.Module, folder: str | Path, tokenizer: str | Path | None = None) -> None:
    """Write ``model`` into ``folder`` so that transformers (or ``load_hf_folder``) loads it back; + the tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PooledClassifier):
        model.encoder.save_pretrained(str(folder))
        write_head(folder, model.head, {"kind": "hf_encoder", "pooling": model.pooling})
    elif isinstance(model, SentenceClassifier):
        model.encoder.save(str(folder))
        write_head(folder, model.head, {"kind": "sentence_transformers"})
    elif _pretrained(model):
        model.save_pretrained(str(folder))
    else:
        raise ConfigError(
            f"--format hf: the student is a {type(model).__name__}, not a Hugging Face model; expected a student "
            "built with model 'hf' or 'sentence_transformers' (use --format safetensors or onnx)"
        )
    if tokenizer is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(tokenizer), **OFFLINE).save_pretrained(str(folder))


def _task(config: Any) -> str:
    for suffix, task in _ARCHITECTURE_TASKS:
        if any(str(a).endswith(suffix) for a in (getattr(config, "architectures", None) or [])):
            return task
    return "encoder"


def load_hf_folder(folder: str | Path) -> nn.Module:
    """Load an HF folder written by ``save_hf_folder`` (the Auto class its config names, plus kdforge's head)."""
    folder = Path(folder)
    info = read_head_info(folder)
    where = f"HF folder {str(folder)!r}"
    if info is not None and info.get("kind") == "sentence_transformers":
        model: nn.Module = SentenceClassifier(load_sentence_transformer(folder), int(info["num_classes"]))
        load_head(folder, model.head, where)
        return model
    from transformers import AutoConfig

    # Guarded: a folder asking for its own code (config.json auto_map) is refused in one line naming it.
    config = guarded(lambda: AutoConfig.from_pretrained(str(folder), **OFFLINE), folder, None)
    if info is not None:
        encoder = guarded(
            lambda: auto_class("encoder").from_pretrained(str(folder), **OFFLINE, **float32()), folder, None
        )
        model = PooledClassifier(encoder, int(info["num_classes"]), str(info.get("pooling", "mean")))
        load_head(folder, model.head, where)
        return model
    task = _task(config)
    return guarded(lambda: auto_class(task).from_pretrained(str(folder), **OFFLINE, **float32()), folder, None)
