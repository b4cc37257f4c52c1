"""`kdforge cache RECIPE`: run the recipe's teacher once over its training split and write a store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from accelerate.utils import gather_object

import kdforge.progress as progress
from kdforge.data.base import with_augment
from kdforge.data.recipe_data import load_data
from kdforge.engine.trainer import get_accelerator
from kdforge.errors import ConfigError
from kdforge.recipe import Recipe
from kdforge.store import StoreReader, build_store, finalize_store, plan_store
from kdforge.strategies.provision import live_teacher


def build_from_recipe(recipe: Recipe) -> dict[str, Any]:
    """Build (or resume) ``recipe.store`` with the recipe's live teacher; every process takes every N-th shard."""
    if recipe.store is None:
        raise ConfigError("store: the recipe needs a store section, e.g. store: {path: stores/fmnist, codec: fp16}")
    if recipe.teacher is None:
        raise ConfigError("teacher: `kdforge cache` needs a teacher with a model")
    cfg, acc = recipe.store, get_accelerator(recipe.train.mixed_precision)
    bundle = load_data(recipe)
    teacher, info = live_teacher(recipe, bundle)
    assert teacher is not None
    teacher.to(acc.device)
    codec_params = {"k": cfg.top_k, "temperature": cfg.temperature} if cfg.codec.startswith("topk") else {}
    plan = plan_store(
        teacher.fingerprint,
        bundle.train,
        bundle.fingerprint,
        cfg.codec,
        codec_params,
        cfg.shard_size,
        bundle.num_classes,
        teacher={
            "model": recipe.teacher.model.model_dump(mode="json"),
            **{k: v for k, v in info.items() if k != "metrics"},
        },
        data={"name": recipe.data.name, "params": recipe.data.params},
        views=cfg.views,
        view_seed=cfg.view_seed,
        features=cfg.features,
        feature_dtype=cfg.feature_dtype,
    )
    data = bundle.train
    if data.augmented:
        # The build's rows are (view, sample) pairs; the data set draws view v of a sample from the store's seed.
        data = with_augment(data, data.augment, augment_seed=plan.view["seed"], views=plan.num_views)
    root = Path(cfg.path).expanduser()
    mine = len(range(acc.process_index, plan.num_shards, acc.num_processes))
    started = time.perf_counter()
    with progress.bar(f"cache {root.name}", mine, progress.enabled(acc.is_main_process)) as bar:
        written = build_store(
            root,
            teacher,
            data,
            plan,
            batch_size=cfg.batch_size,
            rank=acc.process_index,
            world_size=acc.num_processes,
            on_shard=(lambda _i: bar.update(0, advance=1)) if bar is not None else None,
        )
    seconds = time.perf_counter() - started
    per_process = gather_object([len(written)])
    acc.wait_for_everyone()
    manifest = finalize_store(root, plan) if acc.is_main_process else plan
    acc.wait_for_everyone()
    return {
        "path": str(root),
        "shards_written": sum(per_process),
        "shards_written_per_process": per_process,
        "num_shards": plan.num_shards,
        "seconds": seconds,
        "content_sha256": manifest.content_sha256,
        "world_size": acc.num_processes,
    }


def inspect(path: str | Path) -> dict[str, Any]:
    """Manifest, size, bytes per sample and measured fidelity of a store (all shards verified)."""
    reader = StoreReader(path)
    m = reader.manifest
    for i in range(m.num_shards):
        reader.shard(i)
    size = reader.size_bytes()
    reader.close()
    return {
        "path": str(path),
        "complete": m.complete,
        "teacher_fingerprint": m.teacher_fingerprint,
        "data_fingerprint": m.data_fingerprint,
        "split": m.split,
        "num_samples": m.num_samples,
        "num_outputs": m.num_outputs,
        "codec": m.codec,
        "codec_params": m.codec_params,
        "view": m.view,
        "features": m.features,
        "shards": m.num_shards,
        "size_bytes": size,
        "views": m.num_views,
        "bytes_per_sample": size / max(m.num_samples, 1),
        "bytes_per_record": size / max(m.num_rows, 1),
        "bytes_per_position": size / max(int(m.fidelity.get("positions", m.num_samples)), 1),
        "fidelity": m.fidelity,
        "content_sha256": m.content_sha256,
        "kdforge_version": m.kdforge_version,
    }
