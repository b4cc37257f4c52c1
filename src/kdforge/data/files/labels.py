"""The label set (string → id) of a files data set and each split's label ids, computed in Arrow."""

from __future__ import annotations

import re
from collections.abc import Sequence

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from kdforge.data.files.outputs import preview
from kdforge.data.files.source import Source
from kdforge.errors import ConfigError

IGNORE = -100  # the label of a row without one: no target, as in F.cross_entropy
_INT = re.compile(r"-?\d+")


def label_strings(source: Source, column: str) -> pa.ChunkedArray:
    """Column ``column`` as strings; null where a row has no label (null, NaN, empty, or -1 in a ClassLabel)."""
    col = source.column(column)
    feature = source.rows.features.get(column)
    if isinstance(feature, datasets.ClassLabel):
        valid = pc.and_kleene(pc.is_valid(col), pc.greater_equal(col, 0))
        return pc.take(pa.array(feature.names, pa.string()), pc.if_else(valid, col, pa.scalar(None, col.type)))
    kind = col.type
    if pa.types.is_floating(kind):
        col = pc.if_else(pc.is_nan(col), pa.scalar(None, kind), col)
        if pc.all(pc.equal(col, pc.floor(col))).as_py() is not False:  # 1.0, 2.0: integer labels read as floats
            col = pc.cast(col, pa.int64())
    elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)):
        raise ConfigError(
            f"{source.key}={str(source.path)!r}: label column {column!r} holds {kind}; expected strings or integers"
        )
    text = pc.utf8_trim_whitespace(pc.cast(col, pa.string()))
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def _sorted(values: list[str]) -> list[str]:
    """Integer labels in numeric order (2 before 10), others in string order."""
    if all(_INT.fullmatch(v) for v in values):
        return sorted(values, key=int)
    return sorted(values)


def explicit_labels(values: Sequence[str | int]) -> list[str]:
    """``data.params.labels`` as strings (their order gives the ids); empty or repeated labels are refused."""
    names = [str(v) for v in values]
    if not names:
        raise ConfigError("data.params.labels=[]: expected at least one label, or null")
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ConfigError(f"data.params.labels lists {twice!r} twice; each label must appear once")
    return names


def label_set(source: Source, column: str, explicit: Sequence[str | int] | None) -> list[str]:
    """``data.params.labels`` if given; else a ClassLabel's names, else the training labels' sorted unique values."""
    if explicit is not None:
        return explicit_labels(explicit)
    feature = source.rows.features.get(column)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    names = _sorted(pc.unique(label_strings(source, column).drop_null()).to_pylist())
    if not names:
        raise ConfigError(f"{source.key}={str(source.path)!r}: label column {column!r} holds no label at all")
    return names


def label_ids(source: Source, column: str, names: list[str], unlabeled: str, where: str) -> Tensor:
    """Each row's id in ``names`` (-100 for a row without a label when ``unlabeled`` is 'allow').

    A missing label (unless allowed) and a label outside ``names`` fail naming the file, the row and the value;
    ``where`` says where the label set came from.
    """
    strings = label_strings(source, column)
    at = f"{source.key}={str(source.path)!r}"
    if unlabeled != "allow" and strings.null_count:
        row = pc.index(pc.is_null(strings), True).as_py()
        raise ConfigError(
            f"{at} row {row + 1} (sample id {row}): no value in label column {column!r}; fill it in or set "
            "data.params.unlabeled: allow"
        )
    ids = pc.index_in(strings, value_set=pa.array(names, pa.string()))
    unknown = pc.and_(pc.is_null(ids), pc.is_valid(strings))
    if pc.any(unknown).as_py():
        row = pc.index(unknown, True).as_py()
        raise ConfigError(
            f"{at} row {row + 1} (sample id {row}): label {strings[row].as_py()!r} is not in {where} ({preview(names)})"
        )
    return torch.from_numpy(pc.fill_null(ids, IGNORE).to_numpy().astype("int64"))
