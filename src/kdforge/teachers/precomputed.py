"""Teacher logits computed once per training sample and served by sample id: the teacher costs one pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kdforge import progress
from kdforge.errors import ConfigError
from kdforge.recipe import NetworkTeacherConfig
from kdforge.registry import TEACHERS
from kdforge.signals import DenseSignal, Needs, TeacherOutput
from kdforge.teachers.base import Teacher, TeacherBuild, sample_ids
from kdforge.teachers.live import Live

# One table per process for the same teacher and data: benchmarks run many students against one teacher.
_TABLES: dict[tuple[str, str, int], Precomputed] = {}


@TEACHERS.register("precomputed")
class Precomputed(Teacher):
    """An in-memory table of teacher logits indexed by sample id (valid only when every epoch sees the same view)."""

    Config = NetworkTeacherConfig

    def __init__(self, logits: Tensor, known: Tensor, fingerprint: str, source: Live | None = None):
        self.logits = logits
        self.known = known
        self.fingerprint = fingerprint
        # Kept so evaluation can still measure agreement on data that was not precomputed (val, test).
        self.source = source

    @classmethod
    def from_recipe(cls, cfg: NetworkTeacherConfig, build: TeacherBuild) -> tuple[Teacher | None, dict[str, Any]]:
        """The live teacher's logits over the training split, computed once per process (live if only evaluating)."""
        live, info = Live.from_recipe(cfg, build)
        if live is None or not build.signals_needed:
            return live, info
        bundle = build.bundle
        if bundle.train.augment != "none":
            raise ConfigError(
                f"teacher.kind=precomputed needs the same view every epoch, but data.params.augment="
                f"{bundle.train.augment!r}; use augment=none or a live teacher"
            )
        key = (live.fingerprint, bundle.fingerprint, hash(bundle.train.indices.numpy().tobytes()))
        if key not in _TABLES:
            _TABLES.clear()  # one table at a time: they are as large as the data set's logits
            with progress.status(f"computing the teacher's logits for {len(bundle.train):,} training samples"):
                _TABLES[key] = cls.from_live(live, bundle.train)  # type: ignore[arg-type]
        return _TABLES[key], {**info, "kind": "precomputed"}

    @property
    def model(self) -> Any:
        """The network the table came from, for evaluation data."""
        return None if self.source is None else self.source.model

    @classmethod
    def from_live(cls, live: Live, dataset: Any, batch_size: int = 256) -> Precomputed:
        """Run ``live`` once over ``dataset`` (an ArrayDataset with sample ids) and keep the logits."""
        ids = dataset.indices.long()
        size = int(ids.max()) + 1
        table: Tensor | None = None
        known = torch.zeros(size, dtype=torch.bool)
        needs = Needs(teacher_logits=True)
        for start in range(0, len(dataset), batch_size):
            batch = dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset)))))
            logits = live.signals(batch, needs).logits.logits.cpu()
            if table is None:
                table = torch.zeros(size, *logits.shape[1:])
            table[batch["index"].long()] = logits
            known[batch["index"].long()] = True
        assert table is not None
        return cls(table, known, f"precomputed:{live.fingerprint}", source=live)

    def signals(self, batch: dict[str, Any], needs: Needs) -> TeacherOutput:
        """Look the batch's sample ids up; unknown ids are an error, never a silent zero."""
        if needs.teacher_features:
            raise ConfigError(
                "teacher.kind=precomputed holds logits only; features (feature objectives, diagnose) need "
                "teacher.kind=live"
            )
        if not needs.teacher_logits:
            return TeacherOutput()
        idx = sample_ids(batch)
        if int(idx.max()) >= len(self.known) or not bool(self.known[idx].all()):
            raise ConfigError("precomputed teacher: the batch holds sample ids that were never computed")
        return TeacherOutput(logits=DenseSignal(self.logits[idx].to(batch["input"].device)))
