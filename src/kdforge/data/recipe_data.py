"""A recipe's data set: the registered data set its ``data`` section names, with the recipe's tokenizer and seeds."""

from __future__ import annotations

from typing import Any

from kdforge import progress
from kdforge.data.base import DataBundle, load_dataset, with_augment
from kdforge.errors import ConfigError
from kdforge.recipe import Recipe


def load_data(recipe: Recipe, augment_seed: int | None = None, **override: Any) -> DataBundle:
    """The recipe's data set, with optional parameter overrides (e.g. full labels for the teacher)."""
    # The split seed is a property of the data (data.params.seed, default 0), never the run's seed: students of
    # every seed and their shared teacher must see the same train/validation/test partition.
    params = {**recipe.data.params, **override}
    if params.get("tokenizer") in ("teacher", "student"):
        params["tokenizer"] = model_folder(recipe, params["tokenizer"])
    changed = "".join(f", {k}={v}" for k, v in override.items())
    with progress.status(f"loading data {recipe.data.name}{f' ({changed[2:]})' if changed else ''}"):
        bundle = load_dataset(recipe.data.name, **params)
        if bundle.train.augmented:
            # Augmentation draws are the run's: another seed sees other views of the same samples.
            seed = recipe.seed if augment_seed is None else augment_seed
            bundle.train = with_augment(bundle.train, bundle.train.augment, augment_seed=seed)
    return bundle


def model_folder(recipe: Recipe, which: str) -> str:
    """The local folder of the teacher or student model (``data.params.tokenizer: teacher`` uses its tokenizer)."""
    cfg = recipe.student if which == "student" else getattr(recipe.teacher, "model", None)
    path = None if cfg is None else cfg.params.get("path")
    if not path:
        raise ConfigError(
            f"data.params.tokenizer={which!r}: the {which} model has no folder (params.path) to take a tokenizer "
            "from; name a tokenizer folder or a built-in tokenizer instead"
        )
    return str(path)
