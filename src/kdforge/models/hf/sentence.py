"""`sentence_transformers`: a local sentence-transformers folder (with its own pooling) + a linear head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kdforge.errors import ConfigError
from kdforge.models.hf.checks import check_length
from kdforge.models.hf.head import load_head
from kdforge.models.text import padding_mask
from kdforge.registry import MODELS

WHERE = "model 'sentence_transformers'"


def embedding_dimension(encoder: Any) -> int:
    """Size of the sentence embedding (sentence-transformers renamed the method in v6)."""
    get = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return int(get())


def transformer_config(encoder: Any) -> Any:
    """The config of the transformers model inside a SentenceTransformer (its first module), None when unknown."""
    model = getattr(encoder[0], "auto_model", None)
    return getattr(model, "config", None)


class SentenceClassifier(nn.Module):
    """Logits (B, C) from token ids: the SentenceTransformer's embedding (its own pooling) through a linear head.

    Same ``forward(ids, attention_mask=None)`` convention as kdforge's text students (the 'module' adapter).
    """

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(embedding_dimension(encoder), num_classes)

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, C) from token ids (B, L)."""
        mask = padding_mask(ids, attention_mask)
        features = self.encoder({"input_ids": ids, "attention_mask": mask.long()})
        return self.head(features["sentence_embedding"])


def _check_module_types(path: Path) -> None:
    """Refuse a modules.json naming a class outside sentence_transformers: loading it would import that code."""
    # sentence-transformers before 6.0 imported any dotted name a local folder's modules.json gave; checked here so
    # no installed version ever imports code a model folder chose.
    try:
        modules = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{WHERE}: {str(path)!r} is not valid JSON ({' '.join(str(err).split())})") from None
    entries = modules if isinstance(modules, list) else [None]
    for entry in entries:
        kind = entry.get("type") if isinstance(entry, dict) else None
        if not isinstance(kind, str) or not kind.startswith("sentence_transformers."):
            raise ConfigError(
                f"{WHERE}: {str(path)!r} names the module type {kind!r}; expected a class of sentence_transformers "
                "(code named by a model folder is never imported)"
            )


def load_sentence_transformer(folder: Path) -> nn.Module:
    """A SentenceTransformer from a local folder (offline, no remote code), on the CPU in float32."""
    if not (folder / "modules.json").is_file():
        what = "does not exist" if not folder.exists() else "has no modules.json"
        raise ConfigError(
            f"{WHERE}: params.path {str(folder)!r} {what}; expected a local sentence-transformers folder "
            "(for a plain transformers folder use model 'hf' with task: encoder)"
        )
    _check_module_types(folder / "modules.json")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError(f"{WHERE} needs `pip install sentence-transformers` (kdforge[text])") from None
    try:
        encoder = SentenceTransformer(str(folder), device="cpu", local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{WHERE}: cannot load {str(folder)!r}: {' '.join(str(err).split())}") from None
    return encoder.float()


@MODELS.register("sentence_transformers")
def sentence_transformers(
    num_classes: int, input_shape: tuple[int, ...], path: str | None = None, freeze_encoder: bool = True
) -> nn.Module:
    """A sentence-transformers folder as the encoder (frozen by default) + a linear head over its embedding."""
    if len(input_shape) != 1:
        raise ConfigError(f"{WHERE} takes token ids of shape (max_len,), got input_shape {input_shape}")
    if path is None:
        raise ConfigError(f"{WHERE}: params.path is required; expected a local sentence-transformers folder")
    folder = Path(path).expanduser()
    model = SentenceClassifier(load_sentence_transformer(folder), num_classes)
    config = transformer_config(model.encoder)
    if config is not None:
        check_length(config, input_shape[0], WHERE)
    load_head(folder, model.head, f"{WHERE}: params.path")  # a folder kdforge exported carries its trained head
    if freeze_encoder:
        model.encoder.requires_grad_(False)
    return model
