"""The parameters of the ``files`` data set (the keys of ``data.params``), shared by its builder and assembler."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Params:
    """The builder's parameters (the keys of ``data.params``)."""

    train: str
    val: str | None
    test: str | None
    val_fraction: float
    test_fraction: float
    seed: int
    text_column: str
    image_column: str | None
    label_column: str | None
    unlabeled: str
    labels: list[str | int] | None
    tokenizer: str | None
    max_len: int
    image_size: list[int] | None
