"""A cached teacher: signals read from a store on disk, served to objectives exactly like a live teacher's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdforge.data.base import with_augment
from kdforge.errors import ConfigError
from kdforge.recipe import NetworkTeacherConfig
from kdforge.registry import TEACHERS
from kdforge.signals import FeatureSignal, Needs, TeacherOutput
from kdforge.store.reader import StoreReader
from kdforge.teachers.base import Teacher, TeacherBuild, sample_ids
from kdforge.teachers.live import Live


@TEACHERS.register("cached")
class Cached(Teacher):
    """Teacher logits (dense or top-k) looked up by the batch's sample ids."""

    Config = NetworkTeacherConfig

    @classmethod
    def from_recipe(cls, cfg: NetworkTeacherConfig, build: TeacherBuild) -> tuple[Teacher | None, dict[str, Any]]:
        """A store-backed teacher, checked against the recipe's data (and teacher, when its weights are at hand)."""
        recipe, bundle = build.recipe, build.bundle
        if recipe.store is None:
            raise ConfigError("teacher.kind=cached needs store.path: the folder written by `kdforge cache RECIPE`")
        source = None
        if cfg.model is not None:
            source, _ = Live.from_recipe(cfg, _NoTraining(build))
        expect = {
            "data_fingerprint": bundle.fingerprint,
            "split": bundle.train.split,
            "teacher_fingerprint": source.fingerprint if source is not None else None,
        }
        teacher = cls(Path(recipe.store.path).expanduser(), expect, source=source, memory_mb=recipe.store.memory_mb)
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

    def __init__(
        self, store: str | Path, expect: dict[str, Any] | None = None, source: Any = None, memory_mb: int = 1024
    ):
        self.reader = StoreReader(store, resident_bytes=memory_mb << 20)
        manifest = self.reader.manifest
        for key, wanted in (expect or {}).items():
            have = getattr(manifest, key)
            if wanted is not None and have != wanted:
                raise ConfigError(
                    f"store {str(store)!r} does not match the recipe: {key} is {have!r} in the store, "
                    f"{wanted!r} for this recipe's {'teacher' if key.startswith('teacher') else 'data'}"
                )
        self.fingerprint = f"cached:{manifest.teacher_fingerprint}"
        self.source = source  # the live teacher when known, for agreement on evaluation data

    @property
    def model(self) -> Any:
        """The live network behind the store, when its weights are at hand (for evaluation data)."""
        return None if self.source is None else self.source.model

    @property
    def streams(self) -> bool:
        """Whether the store is read shard by shard from disk (too large to hold in memory)."""
        return not self.reader.in_memory

    def prefetch(self, batch: dict[str, Any]) -> None:
        """Start reading the shards ``batch`` will need, while the current step runs."""
        views = batch.get("view")
        self.reader.prefetch(sample_ids(batch), None if views is None else torch.as_tensor(views))

    def signals(self, batch: dict[str, Any], needs: Needs) -> TeacherOutput:
        """The stored signals of every sample of ``batch``: logits, the features asked for, and the token mask."""
        stored = self.reader.manifest.feature_names
        missing = [name for name in needs.teacher_features if name not in stored]
        if missing:
            raise ConfigError(
                f"store {str(self.reader.root)!r} has no teacher feature {missing[0]!r} (it holds "
                f"{list(stored) or 'logits only'}); add it to store.features and rebuild, or use a live teacher"
            )
        if not needs.teacher_logits and not needs.teacher_features:
            return TeacherOutput()
        views = batch.get("view")
        views = None if views is None else torch.as_tensor(views)
        out = self.reader.lookup(sample_ids(batch), views, features=needs.teacher_features)
        device = batch["input"].device
        signal = out.logits.to(device) if out.logits is not None else None
        features = None
        if needs.teacher_features and out.features is not None:
            features = FeatureSignal({k: out.features[k].to(device) for k in needs.teacher_features})
        return TeacherOutput(
            logits=signal if needs.teacher_logits else None,
            features=features,
            mask=None if out.mask is None else out.mask.to(device),
        )


class _NoTraining:
    """The same build, but the teacher network is only loaded, never trained (a store is read, not rebuilt)."""

    def __init__(self, build: TeacherBuild):
        self.build = build
        self.recipe, self.bundle, self.signals_needed = build.recipe, build.bundle, build.signals_needed

    def network(self, allow_training: bool = True) -> Any:
        """The network from its checkpoint or the teacher cache; None when it would have to be trained."""
        return self.build.network(allow_training=False)
