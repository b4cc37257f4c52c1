"""Checks that a transformers model fits the run's data: token ids, labels, vocabulary and sequence length."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdforge.errors import ConfigError


def embedding_rows(model: nn.Module) -> int | None:
    """Rows of the model's input embedding (the largest token id it can read + 1); None when it has none to ask."""
    # The first module that answers get_input_embeddings: the model itself, or the transformers model that
    # kdforge's wrappers (pooled encoder, SentenceTransformer, TinyBert) hold inside.
    for module in model.modules():
        get = getattr(module, "get_input_embeddings", None)
        if callable(get):
            try:
                embedding = get()
            except (NotImplementedError, AttributeError):
                continue
            if isinstance(embedding, nn.Embedding):
                return embedding.num_embeddings
    return None


def check_tokenizer_fits(model: nn.Module, vocab_size: int) -> None:
    """Refuse a tokenizer whose ids (0 .. vocab_size - 1) reach past the model's input embedding rows."""
    rows = embedding_rows(model)
    if rows is not None and vocab_size > rows:
        raise ConfigError(
            f"data.params.tokenizer: token ids reach {vocab_size - 1} (a vocabulary of {vocab_size}) but the model's "
            f"input embedding has {rows} rows; expected a tokenizer whose ids are all < {rows} (the model's own)"
        )


def check_labels(config: Any, num_classes: int, where: str) -> None:
    """A trained classification head must have as many labels as the data has classes."""
    if config.num_labels != num_classes:
        labels = dict(sorted((int(k), v) for k, v in (config.id2label or {}).items()))
        raise ConfigError(
            f"{where}: the model's classification head has {config.num_labels} labels {labels} but the data has "
            f"{num_classes} classes; expected a head of {num_classes} labels (or a folder without a trained head)"
        )


def check_vocabulary(model: nn.Module, num_classes: int, where: str) -> None:
    """A causal LM predicts over its vocabulary, which is the data's num_classes (the tokenizer's size)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = getattr(head, "out_features", None) or getattr(model.config, "vocab_size", None)
    if vocab is not None and vocab != num_classes:
        raise ConfigError(
            f"{where}: the causal LM's vocabulary has {vocab} tokens but the data's tokenizer has {num_classes} "
            "(a causal LM's num_classes is the vocabulary size); expected data tokenized with the model's tokenizer"
        )
    check_tokenizer_fits(model, num_classes)


def check_length(config: Any, max_len: int, where: str) -> None:
    """Sequences of the data must fit the model's position embeddings."""
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and max_len > limit:
        raise ConfigError(
            f"{where}: the data's sequences are {max_len} tokens long but the model has {limit} positions "
            f"(max_position_embeddings); expected data.params.max_len <= {limit}"
        )
