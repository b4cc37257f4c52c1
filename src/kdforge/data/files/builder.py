"""The registered data set ``files``: the user's own data named in the recipe, checked before anything is read."""

from __future__ import annotations

from typing import Literal

from kdforge.data.base import DataBundle, fraction_positions
from kdforge.data.files.params import Params
from kdforge.errors import ConfigError
from kdforge.registry import DATASETS


def _check(p: Params) -> None:
    """Everything that can be checked without reading a file."""
    if p.unlabeled not in ("error", "allow"):
        raise ConfigError(f"data.params.unlabeled={p.unlabeled!r}: expected 'error' or 'allow'")
    for key, value in (("val_fraction", p.val_fraction), ("test_fraction", p.test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"data.params.{key}={value}: expected a fraction in [0, 1)")
    if p.test is not None and p.test_fraction > 0:
        raise ConfigError(
            f"data.params.test_fraction={p.test_fraction} and data.params.test={p.test!r}: give one of them"
        )
    carved = (p.val_fraction if p.val is None else 0.0) + (p.test_fraction if p.test is None else 0.0)
    if carved >= 1:
        raise ConfigError(f"data.params.val_fraction + test_fraction = {carved}: leaves no training rows")
    if p.test is None and p.test_fraction == 0:
        raise ConfigError(
            "data.params.test: a run evaluates on a test split; give a test file or folder, or carve one from the "
            "training data with data.params.test_fraction > 0 (e.g. 0.1)"
        )
    if p.max_len < 2:
        raise ConfigError(f"data.params.max_len={p.max_len}: expected at least 2 tokens")
    if p.image_size is not None and (len(p.image_size) != 2 or min(p.image_size) < 1):
        raise ConfigError(f"data.params.image_size={p.image_size!r}: expected [height, width], both >= 1")


@DATASETS.register("files")
def files(
    train: str | None = None,
    val: str | None = None,
    test: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    text_column: str = "text",
    image_column: str | None = None,
    label_column: str | None = "label",
    unlabeled: Literal["error", "allow"] = "error",
    labels: list[str | int] | None = None,
    tokenizer: str | None = None,
    max_len: int = 128,
    image_size: list[int] | None = None,
    prompt_column: str | None = None,
    response_column: str | None = None,
    label_fraction: float = 1.0,
) -> DataBundle:
    """Your own data: CSV/TSV, JSONL/JSON, Parquet, a save_to_disk folder, or an image folder (a sub-folder per class).

    ``val``/``test`` name separate files; without them ``val_fraction``/``test_fraction`` of ``train`` are carved
    off (stratified by label, seeded by ``seed``; ``val_fraction`` is not used when ``val`` is given). Sample ids are
    row numbers in the file (or the sorted folder listing). Text needs ``tokenizer``: a local tokenizer or model
    folder, or 'minilm'. A table of images names them in ``image_column`` (paths relative to the table's folder).
    ``prompt_column`` + ``response_column`` make causal-LM rows (prompt + response + eos, loss on the response only).
    ``label_fraction`` keeps that share of each class of the training split (the labelled subset a semi-supervised
    run declares as ``strategy.labelled_fraction``: the same samples for the same ``seed``).
    """
    if train is None:
        raise ConfigError("data.params.train: required; a file or folder holding the training data")
    p = Params(
        train, val, test, val_fraction, test_fraction, seed, text_column, image_column, label_column,
        unlabeled, labels, tokenizer, max_len, image_size,
    )  # fmt: skip
    _check(p)
    try:
        from kdforge.data.files.bundle import assemble
        from kdforge.data.files.pairs import assemble_pairs
    except ImportError as err:
        raise ConfigError(
            f"data.name: 'files' needs `pip install 'kdforge[files]'` (datasets, pyarrow, pillow): {err}"
        ) from None
    if not 0 < label_fraction <= 1:
        raise ConfigError(f"data.params.label_fraction={label_fraction}: expected a share in (0, 1]")
    if prompt_column is not None or response_column is not None:
        if label_fraction != 1:
            raise ConfigError("data.params.label_fraction: causal-LM rows (prompt_column) have no classes to keep")
        return assemble_pairs(p, prompt_column, response_column)
    bundle = assemble(p)
    if label_fraction != 1:
        # The same samples `stratified_fraction` keeps of an in-memory split (and mean_teacher labels) for this seed.
        bundle.train = bundle.train.take(fraction_positions(bundle.train, label_fraction, seed))
    return bundle
