"""A cached teacher: signals read from a store on disk, served to objectives exactly like a live teacher's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdforge.errors import ConfigError
from kdforge.registry import TEACHERS
from kdforge.signals import FeatureSignal, Needs, TeacherOutput
from kdforge.store.reader import StoreReader
from kdforge.teachers.base import sample_ids


@TEACHERS.register("cached")
class Cached:
    """Teacher logits (dense or top-k) looked up by the batch's sample ids."""

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
