"""Build the pieces a run needs from its recipe: data, student, and a teacher (loaded or trained once, cached)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch import nn

from kdforge.data import DataBundle, load_dataset, make_loader
from kdforge.data.base import with_augment
from kdforge.engine.atomic import atomic_replace_dir, readable_dir, sha256_file
from kdforge.engine.checkpoint import save_model
from kdforge.engine.distiller import Distiller
from kdforge.engine.trainer import Trainer, get_accelerator
from kdforge.errors import ConfigError, IntegrityError
from kdforge.models import build_model
from kdforge.recipe import ModelConfig, Recipe, TrainConfig
from kdforge.teachers import Cached, Live, PastSelf, Precomputed


def load_data(recipe: Recipe, augment_seed: int | None = None, **override: Any) -> DataBundle:
    """The recipe's data set, with optional parameter overrides (e.g. full labels for the teacher)."""
    # The split seed is a property of the data (data.params.seed, default 0), never the run's seed: students of
    # every seed and their shared teacher must see the same train/validation/test partition.
    params = {**recipe.data.params, **override}
    bundle = load_dataset(recipe.data.name, **params)
    if bundle.train.augmented:
        # Augmentation draws are the run's: another seed sees other views of the same samples.
        seed = recipe.seed if augment_seed is None else augment_seed
        bundle.train = with_augment(bundle.train, bundle.train.augment, augment_seed=seed)
    return bundle


def require_classification(bundle: DataBundle, what: str) -> None:
    """Refuse sequence data (one label per token) where kdforge only trains and evaluates classifiers so far."""
    labels = bundle.train.labels
    if labels is not None and labels.dim() > 1:
        raise ConfigError(
            f"data.name: {bundle.name!r} holds sequences (a label per token); {what} handles classification only "
            "so far — build a store from it with `kdforge cache` and a teacher.checkpoint, or use the Python API"
        )


def build(cfg: ModelConfig, bundle: DataBundle, where: str) -> nn.Module:
    """Build a registered model for ``bundle``; errors name the recipe key."""
    try:
        return build_model(cfg.name, bundle.num_classes, bundle.input_shape, **cfg.params)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def loaders(recipe: Recipe, bundle: DataBundle, teacher: Any = None) -> tuple[Any, dict[str, Any]]:
    """Shuffled train loader and ordered evaluation loaders (val when present, and test).

    A teacher that streams its store from disk gets a shard-local read order (``store.read_window`` shards at a time).
    """
    d = recipe.data
    # data.batch_size is the global batch: N processes each take 1/N, so one recipe optimises the same way anywhere.
    n = get_accelerator().num_processes
    if d.batch_size % n:
        raise ConfigError(f"data.batch_size={d.batch_size} must be divisible by the number of processes ({n})")
    per_process = d.batch_size // n
    streams = getattr(teacher, "streams", False) and recipe.store is not None
    train = make_loader(
        bundle.train,
        per_process,
        shuffle=True,
        seed=recipe.seed,
        num_workers=d.num_workers,
        read_block=teacher.reader.manifest.shard_size if streams else None,
        read_window=recipe.store.read_window if recipe.store is not None else 4,
    )
    evals = {}
    if bundle.val is not None:
        evals["val"] = make_loader(bundle.val, d.eval_batch_size, shuffle=False, seed=recipe.seed)
    evals["test"] = make_loader(bundle.test, d.eval_batch_size, shuffle=False, seed=recipe.seed)
    return train, evals


# Restrictions of the student's data (fewer labels, fewer images) never shrink what the teacher is trained on;
# these are the values the teacher sees instead.
STUDENT_ONLY_DATA: dict[str, Any] = {"label_fraction": 1.0, "train_limit": None}


def teacher_seed(recipe: Recipe) -> int:
    """The seed the teacher is trained with (students of several seeds share one teacher)."""
    t = recipe.teacher
    return t.seed if t is not None and t.seed is not None else recipe.seed


def _teacher_key(recipe: Recipe, train_cfg: TrainConfig) -> str:
    t = recipe.teacher
    assert t is not None and t.model is not None
    data_params = {k: v for k, v in recipe.data.params.items() if k not in STUDENT_ONLY_DATA}
    ident = {
        "model": t.model.model_dump(mode="json"),
        "data": {"name": recipe.data.name, "params": data_params, "batch_size": recipe.data.batch_size},
        "train": train_cfg.model_dump(mode="json"),
        "seed": teacher_seed(recipe),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _load_weights(model: nn.Module, path: Path, where: str) -> None:
    if not path.is_file():
        raise ConfigError(f"{where}: checkpoint file {str(path)!r} does not exist")
    try:
        weights = load_file(str(path))
    except Exception as err:  # safetensors raises several error types for a damaged file
        raise ConfigError(f"{where}: {str(path)!r} is not a readable safetensors file ({err})") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{where}: {str(path)!r} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def train_teacher(recipe: Recipe, allow_training: bool = True) -> tuple[nn.Module | None, dict[str, Any]]:
    """Train the recipe's teacher with CE on full labels, or reuse it from the cache folder."""
    t = recipe.teacher
    assert t is not None and t.model is not None
    train_cfg = t.train or TrainConfig(epochs=2, optimizer={"name": "adamw", "lr": 2e-3})
    # One Accelerator per process: the teacher trains with the run's precision.
    train_cfg = train_cfg.model_copy(update={"mixed_precision": recipe.train.mixed_precision})
    full = {k: v for k, v in STUDENT_ONLY_DATA.items() if k in recipe.data.params}
    bundle = load_data(recipe, augment_seed=teacher_seed(recipe), **full)
    set_seed(teacher_seed(recipe))
    model = build(t.model, bundle, "teacher.model")
    cache = Path(t.cache_dir).expanduser() / f"{t.model.name}-{_teacher_key(recipe, train_cfg)}"
    found = readable_dir(cache)
    meta_path = found / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if sha256_file(found / "model.safetensors") != meta["sha256"]:
            raise IntegrityError(f"cached teacher {str(cache)!r} does not match its sha256; delete the folder")
        _load_weights(model, found / "model.safetensors", "teacher cache")
        return model.eval(), {**meta, "cache": str(cache), "reused": True}
    if not allow_training:
        return None, {"cache": str(cache), "missing": True}
    require_classification(bundle, "teacher training (no teacher.checkpoint given)")
    train_loader, evals = loaders(recipe.model_copy(update={"seed": teacher_seed(recipe)}), bundle)
    trainer = Trainer(Distiller(model, None, {"ce": 1.0}), train_cfg, run_dir=None, seed=teacher_seed(recipe))
    result = trainer.fit(train_loader, evals)
    meta = {
        "model": t.model.model_dump(mode="json"),
        "data": recipe.data.name,
        "metrics": result.last,
        "train_wall_s": result.wall_s,
    }
    acc = get_accelerator()
    if acc.is_main_process:

        def write(tmp: Path) -> None:
            save_model(model, tmp / "model.safetensors")
            meta["sha256"] = sha256_file(tmp / "model.safetensors")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

        atomic_replace_dir(write, cache)
    acc.wait_for_everyone()
    return model.eval(), {**meta, "cache": str(cache), "reused": False}


_PRECOMPUTED: dict[tuple[str, str, int], Precomputed] = {}


def precompute(live: Live, bundle: DataBundle) -> Precomputed:
    """Teacher logits over the training split, computed once per process for the same teacher and data."""
    key = (live.fingerprint, bundle.fingerprint, hash(bundle.train.indices.numpy().tobytes()))
    if key not in _PRECOMPUTED:
        _PRECOMPUTED.clear()  # one table at a time: they are as large as the data set's logits
        _PRECOMPUTED[key] = Precomputed.from_live(live, bundle.train)
    return _PRECOMPUTED[key]


def live_teacher(recipe: Recipe, bundle: DataBundle, allow_training: bool = True) -> tuple[Live | None, dict[str, Any]]:
    """The recipe's teacher network, from its checkpoint or the teacher cache (trained there when allowed)."""
    t = recipe.teacher
    if t is None or t.model is None:
        raise ConfigError("teacher.model: required for this teacher kind (e.g. {name: cnn})")
    if t.checkpoint:
        model = build(t.model, bundle, "teacher.model")
        _load_weights(model, Path(t.checkpoint).expanduser(), "teacher.checkpoint")
        info: dict[str, Any] = {"checkpoint": t.checkpoint}
    else:
        model, info = train_teacher(recipe, allow_training)
        if model is None:
            return None, info
    dtype = torch.bfloat16 if t.dtype == "bfloat16" else None
    if dtype is not None:
        model = model.to(dtype)
    return Live(model, dtype=dtype), info


def provide_teacher(
    recipe: Recipe, bundle: DataBundle, allow_training: bool = True, signals_needed: bool = True
) -> tuple[Any, dict[str, Any]]:
    """The teacher the recipe asks for (live when only evaluation needs it), plus a description."""
    t = recipe.teacher
    if t is None:
        return None, {}
    if t.kind == "past_self":
        if get_accelerator().num_processes > 1:
            raise ConfigError("teacher.kind=past_self keeps per-process predictions; run it in one process")
        size = int(bundle.train.indices.max()) + 1
        return PastSelf(size, bundle.num_classes), {"kind": "past_self"}
    if t.kind == "cached":
        return cached_teacher(recipe, bundle)
    live, info = live_teacher(recipe, bundle, allow_training)
    if live is None:
        return None, info
    if t.kind == "precomputed" and signals_needed:
        if bundle.train.augment != "none":
            raise ConfigError(
                f"teacher.kind=precomputed needs the same view every epoch, but data.params.augment="
                f"{bundle.train.augment!r}; use augment=none or a live teacher"
            )
        return precompute(live, bundle), {"kind": "precomputed", **info}
    return live, {"kind": "live", **info}


def cached_teacher(recipe: Recipe, bundle: DataBundle) -> tuple[Cached, dict[str, Any]]:
    """A store-backed teacher, checked against the recipe's data (and teacher, when its weights are at hand)."""
    if recipe.store is None:
        raise ConfigError("teacher.kind=cached needs store.path: the folder written by `kdforge cache RECIPE`")
    source = None
    if recipe.teacher is not None and recipe.teacher.model is not None:
        source, _ = live_teacher(recipe, bundle, allow_training=False)
    expect = {
        "data_fingerprint": bundle.fingerprint,
        "split": bundle.train.split,
        "teacher_fingerprint": source.fingerprint if source is not None else None,
    }
    teacher = Cached(Path(recipe.store.path).expanduser(), expect, source=source, memory_mb=recipe.store.memory_mb)
    view = teacher.reader.manifest.view
    if view["augment"] != bundle.train.augment:
        raise ConfigError(
            f"data.params.augment is {bundle.train.augment!r} but store {recipe.store.path!r} was built with "
            f"augment={view['augment']!r}; train with the augmentation the store holds"
        )
    if bundle.train.augmented:
        # Epoch e reads stored view e % views: the student must draw exactly those views, from the store's seed.
        bundle.train = with_augment(bundle.train, view["augment"], augment_seed=view["seed"], views=view["views"])
    return teacher, {
        "kind": "cached",
        "store": recipe.store.path,
        "streamed": teacher.streams,
        "content_sha256": teacher.reader.manifest.content_sha256,
    }
