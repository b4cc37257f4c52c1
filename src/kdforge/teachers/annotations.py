"""The teacher kind ``annotations``: an LLM annotator's label distributions, served by sample id as a dense signal.

``kdforge annotate`` writes ``labeled.parquet`` (text, label, probs, confidence); a run that trains on that file with
the ``files`` data set names it here too, and row i's ``probs`` become the teacher's logits (log-probabilities) for
sample i. The student then learns the teacher's soft labels through any logits objective (kd, jsd, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ConfigDict, Field
from torch import Tensor

from kdforge.errors import ConfigError
from kdforge.files import sha256_file
from kdforge.recipe import TeacherConfig
from kdforge.registry import TEACHERS
from kdforge.sealed_parquet import read_sealed_table
from kdforge.signals import DenseSignal, Needs, TeacherOutput
from kdforge.teachers.base import Teacher, TeacherBuild, sample_ids

LABELS_KEY = b"kdforge.labels"
ANNOTATION_FIX = "write it again with `kdforge annotate` (its request cache makes that quick)"


class AnnotationsConfig(TeacherConfig):
    """``teacher: {kind: annotations, path: OUT/labeled.parquet}``."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, description="a labeled.parquet written by kdforge annotate (the training file)")
    column: str = "probs"
    floor: float = Field(1e-6, gt=0, lt=1, description="probabilities are clipped here before the log")


def read_annotations(path: Path) -> Any:
    """The annotation file as a pyarrow table, its seal checked (read once: distributions and texts come from it)."""
    if not path.is_file():
        raise ConfigError(f"teacher.path={str(path)!r}: no such file; write it with `kdforge annotate` (again)")
    return read_sealed_table(path, ANNOTATION_FIX, what="teacher.path")


def read_distributions(path: Path, table: Any, column: str) -> tuple[np.ndarray, list[str] | None]:
    """The [rows, labels] probability matrix of an annotation table and its label names (from the file's metadata)."""
    if column not in table.column_names:
        raise ConfigError(
            f"teacher.path={str(path)!r} has no column {column!r}; columns found: {', '.join(table.column_names)}"
        )
    rows = table.column(column).to_pylist()
    bad = next((i for i, r in enumerate(rows) if r is None or not len(r)), None)
    if bad is not None:
        raise ConfigError(f"teacher.path={str(path)!r}: row {bad} has no distribution in column {column!r}")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ConfigError(f"teacher.path={str(path)!r}: rows of {sorted(widths)} labels; expected one width")
    meta = table.schema.metadata or {}
    names = json.loads(meta[LABELS_KEY]) if LABELS_KEY in meta else None
    return np.asarray(rows, dtype=np.float32), names


def _check_rows(path: Path, table: Any, recipe: Any) -> None:
    """Row i of the annotation file must be training sample i: the same file, or a file with the same texts."""
    params = dict(getattr(getattr(recipe, "data", None), "params", {}) or {})
    train = params.get("train")
    if train is None or Path(train).expanduser().resolve() == path.resolve():
        return
    from kdforge.data.files.source import read_source

    ours = table.column("text").to_pylist() if "text" in table.column_names else None
    theirs = read_source("data.params.train", train).column(params.get("text_column", "text")).to_pylist()
    if ours is None or ours[: len(theirs)] != theirs:
        raise ConfigError(
            f"teacher.path={str(path)!r} and data.params.train={train!r} do not hold the same texts row by row: "
            "the soft labels would be misaligned; train on the annotation file itself"
        )


@TEACHERS.register("annotations")
class Annotations(Teacher):
    """Label distributions read from an annotation file, one row per training sample id."""

    Config = AnnotationsConfig

    def __init__(self, logits: Tensor, fingerprint: str):
        self.logits = logits
        self.fingerprint = fingerprint

    @classmethod
    def from_recipe(cls, cfg: AnnotationsConfig, build: TeacherBuild) -> tuple[Teacher | None, dict[str, Any]]:
        """Read the file; its label set must be the data set's, in the same order."""
        path = Path(cfg.path).expanduser()
        table = read_annotations(path)
        probs, names = read_distributions(path, table, cfg.column)
        bundle = build.bundle
        if probs.shape[1] != bundle.num_classes:
            raise ConfigError(
                f"teacher.path={str(path)!r} holds distributions over {probs.shape[1]} labels; the data set has "
                f"{bundle.num_classes} ({', '.join(map(str, bundle.class_names))})"
            )
        if names is not None and [str(n) for n in bundle.class_names] != names:
            raise ConfigError(
                f"teacher.path={str(path)!r} labels are {names}; the data set's are {list(bundle.class_names)}: "
                "give data.params.labels in the annotation's order"
            )
        if len(bundle.train) and int(bundle.train.indices.max()) >= len(probs):
            raise ConfigError(
                f"teacher.path={str(path)!r} has {len(probs)} rows; the training data has sample id "
                f"{int(bundle.train.indices.max())}: train on the same file (data.params.train)"
            )
        _check_rows(path, table, build.recipe)
        logits = torch.from_numpy(np.log(np.clip(probs, cfg.floor, None)))
        fingerprint = "annotations:" + sha256_file(path)[:16]
        return cls(logits, fingerprint), {"kind": "annotations", "path": str(path), "rows": len(probs)}

    def signals(self, batch: dict[str, Any], needs: Needs) -> TeacherOutput:
        """The rows of the batch's sample ids as log-probabilities."""
        if needs.teacher_features:
            raise ConfigError("an annotations teacher holds label distributions only; it has no features")
        if not needs.teacher_logits:
            return TeacherOutput()
        idx = sample_ids(batch)
        if int(idx.max()) >= len(self.logits):
            raise ConfigError(f"annotations teacher: sample id {int(idx.max())} has no row ({len(self.logits)} rows)")
        device = batch["input"].device if isinstance(batch.get("input"), Tensor) else "cpu"
        return TeacherOutput(logits=DenseSignal(self.logits[idx].to(device)))
