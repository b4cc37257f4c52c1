"""A cached teacher: signals read from a store on disk, served to objectives exactly like a live teacher's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdforge.errors import ConfigError
from kdforge.registry import TEACHERS
from kdforge.signals import DenseSignal, Needs, SparseSignal, TeacherOutput
from kdforge.store.reader import StoreReader
from kdforge.teachers.base import sample_ids


@TEACHERS.register("cached")
class Cached:
    """Teacher logits (dense or top-k) looked up by the batch's sample ids."""

    def __init__(self, store: str | Path, expect: dict[str, Any] | None = None, source: Any = None):
        self.reader = StoreReader(store)
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

    def signals(self, batch: dict[str, Any], needs: Needs) -> TeacherOutput:
        """The stored signal of every sample of ``batch``."""
        if needs.teacher_features:
            raise ConfigError("this store holds logits only; feature objectives need a live teacher")
        if not needs.teacher_logits:
            return TeacherOutput()
        views = batch.get("view")
        signal = self.reader.signal(sample_ids(batch), None if views is None else torch.as_tensor(views))
        device = batch["input"].device
        if isinstance(signal, DenseSignal):
            signal = DenseSignal(signal.logits.to(device))
        else:
            signal = SparseSignal(
                signal.ids.to(device), signal.logprobs.to(device), signal.tail.to(device), signal.vocab_size
            )
        return TeacherOutput(logits=signal)
