"""Assemble a files data set: read every split, check columns and labels, then tokenize or scan images once."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from kdforge.data.base import DataBundle
from kdforge.data.files.dataset import FileDataset, Inputs
from kdforge.data.files.image_stats import check_opens, image_spec
from kdforge.data.files.images import IMAGE_COLUMN, LABEL_COLUMN, ImageInputs
from kdforge.data.files.labels import IGNORE, explicit_labels, label_ids, label_set
from kdforge.data.files.source import Source, check_path, read_source
from kdforge.data.files.splits import carve, check_carved
from kdforge.data.files.text import TextInputs
from kdforge.data.files.tokenize import check_text, load_tokenizer, tokenize, tokenizer_identity
from kdforge.errors import ConfigError

if TYPE_CHECKING:
    from kdforge.data.files.params import Params

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One source and the columns read from it."""

    source: Source
    input_column: str
    label_column: str | None
    labels: torch.Tensor | None = None
    reader: Inputs | None = None


def _columns(source: Source, p: Params) -> tuple[str, str | None]:
    """(input column, label column): an image folder's listing has its own; tables use the recipe's."""
    if source.kind == "images":
        return IMAGE_COLUMN, LABEL_COLUMN
    return (p.image_column or p.text_column), p.label_column


def _read(p: Params, is_text: bool) -> dict[str, Split]:
    splits: dict[str, Split] = {}
    for name in SPLITS:
        value = getattr(p, name)
        if value is None:
            continue
        source = read_source(f"data.params.{name}", value)
        if (source.kind != "images" and p.image_column is None) != is_text:
            what = "text" if is_text else "images"
            raise ConfigError(f"data.params.{name}={value!r} does not hold {what} like data.params.train does")
        splits[name] = Split(source, *_columns(source, p))
        source.column(splits[name].input_column)  # an unknown column fails here, listing those found
        if is_text:
            check_text(source, splits[name].input_column)
    return splits


def _labels(splits: dict[str, Split], p: Params) -> list[str]:
    """The label set, and every split's label ids (-100 for rows without one)."""
    train = splits["train"]
    if train.label_column is None:
        if p.labels is None:
            raise ConfigError(
                "data.params.labels: unlabelled data (label_column: null) needs the list of labels the models output"
            )
        return explicit_labels(p.labels)
    names = label_set(train.source, train.label_column, p.labels)
    where = "data.params.labels" if p.labels is not None else f"the labels of data.params.train={p.train!r}"
    for split in splits.values():
        if split.label_column is not None:
            split.labels = label_ids(split.source, split.label_column, names, p.unlabeled, where)
    return names


def _readers(splits: dict[str, Split], p: Params, is_text: bool) -> dict[str, Any]:
    """Build every split's reader (the caches are written here, after every check passed); returns what shapes it."""
    if is_text:
        assert p.tokenizer is not None
        tok = load_tokenizer(p.tokenizer)
        for split in splits.values():
            tokens = tokenize(split.source, split.input_column, p.tokenizer, p.max_len)
            split.reader = TextInputs(tokens, tok.pad_token_id)
        return {"shape": (p.max_len,), "tokenizer": tokenizer_identity(p.tokenizer), "max_len": p.max_len}
    train = splits["train"]
    spec = image_spec(train.source, train.input_column, p.image_size)
    for split in splits.values():
        check_opens(split.source, split.input_column)
        source = split.source
        split.reader = ImageInputs(source.rows, split.input_column, spec, source.key, source.base)
    return {"shape": spec.shape, "mode": spec.mode, "mean": spec.mean, "std": spec.std}


def _fingerprint(splits: dict[str, Split], names: list[str], inputs: dict[str, Any], p: Params) -> str:
    """The data, not the split: file contents, columns, label set and how inputs are made (not seed or fractions)."""
    ident = {
        "name": "files",
        "content": {k: s.source.content for k, s in splits.items()},
        "columns": {k: [s.input_column, s.label_column] for k, s in splits.items()},
        "labels": names,
        "unlabeled": p.unlabeled,
        "inputs": {k: list(v) if isinstance(v, tuple) else v for k, v in inputs.items()},
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def assemble(p: Params) -> DataBundle:
    """The DataBundle of a files data set; every user error is a ConfigError raised before a token or image cache is
    written (``datasets`` converts a CSV/JSON file to its Arrow cache on first read, before columns can be checked)."""
    for name in SPLITS:  # cheap path checks for every split before reading any of them
        if getattr(p, name) is not None:
            check_path(f"data.params.{name}", getattr(p, name))
    is_text = check_path("data.params.train", p.train)[1] != "images" and p.image_column is None
    if is_text:
        if p.tokenizer is None:
            raise ConfigError(
                f"data.params.tokenizer: required for text data ({p.train!r}); a local tokenizer or model folder, "
                "or 'minilm'"
            )
        load_tokenizer(p.tokenizer)
    splits = _read(p, is_text)
    names = _labels(splits, p)
    inputs = _readers(splits, p, is_text)

    def dataset(name: str) -> FileDataset:
        split = splits[name]
        assert split.reader is not None
        ds = FileDataset(split.reader, torch.arange(len(split.source.rows)), split.labels, name)
        if name == "train" or ds.labels is None:
            return ds
        # Rows without a label cannot be scored: evaluation sees the labelled rows only (ids unchanged).
        ds = ds.take(torch.nonzero(ds.labels != IGNORE).flatten())
        if len(ds) == 0:
            raise ConfigError(f"data.params.{name}={getattr(p, name)!r} has no labelled row to evaluate on")
        return ds

    full = dataset("train")
    val_fraction = p.val_fraction if "val" not in splits else 0.0
    test_fraction = p.test_fraction if "test" not in splits else 0.0
    positions = carve(full.labels, len(full), val_fraction, test_fraction, p.seed)
    check_carved(positions, len(full), val_fraction, test_fraction)
    val = dataset("val") if "val" in splits else (full.take(positions[1], "val") if val_fraction > 0 else None)
    test = dataset("test") if "test" in splits else full.take(positions[2], "test")
    return DataBundle(
        train=full.take(positions[0]),  # type: ignore[arg-type]  # FileDataset speaks ArrayDataset's protocol
        val=val,  # type: ignore[arg-type]
        test=test,  # type: ignore[arg-type]
        num_classes=len(names),
        input_shape=tuple(inputs["shape"]),
        class_names=names,
        name="files",
        fingerprint=_fingerprint(splits, names, inputs, p),
    )
