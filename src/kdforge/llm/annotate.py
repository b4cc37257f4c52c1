"""``kdforge annotate``: an LLM (or embedding) teacher labels unlabeled texts into a label set.

Output, in ``output_dir/name/``: ``annotations.parquet`` and ``.jsonl`` (every input row: status ok / unknown /
failed / empty, label, probs, confidence, raw answer), ``labeled.parquet`` (the rows with a distribution: what a
student trains on, with the ``files`` data set and the ``annotations`` teacher kind), ``summary.json``, and, when some
rows have gold labels, ``agreement.json`` and ``coverage.png``. Every request goes through the request cache, so a
re-run sends nothing and a killed job resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from kdforge.errors import ConfigError
from kdforge.files import atomic_write_text
from kdforge.llm.job import JobRecipe, build_backend, open_cache, output_folder, validate_job
from kdforge.llm.labels import LabelSet, PromptConfig, clip
from kdforge.llm.methods import METHODS, MethodContext, Outcome, calibrate, content_free_floor
from kdforge.llm.summaries import usage_line
from kdforge.progress import bar, enabled

Method = Literal["auto", "score", "logprobs", "vote", "answer", "similarity"]


class InputConfig(BaseModel):
    """The texts to label: a CSV/TSV/JSONL/Parquet file, its text column, optional gold labels, a subset."""

    model_config = ConfigDict(extra="forbid")
    path: str
    text_column: str = "text"
    gold_column: str | None = Field(None, description="gold labels, where some exist: the agreement report")
    limit: int | None = Field(None, gt=0, description="annotate a seeded random subset of this many rows")


class LabelingConfig(BaseModel):
    """How to label: the label set, the prompt, the method and its settings, calibration."""

    model_config = ConfigDict(extra="forbid")
    labels: list[str] | dict[str, Any]
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    method: Method = "auto"
    samples: int = Field(5, ge=1, description="vote: answers sampled per text")
    temperature: float = Field(0.7, ge=0, description="vote: sampling temperature")
    top_logprobs: int = Field(20, ge=1, le=20)
    max_tokens: int = Field(8, ge=1, description="answer length for logprobs / vote / answer")
    calibrate: bool | list[str] = Field(False, description="contextual calibration; true = the content-free 'N/A'")
    batch: int = Field(32, ge=1, description="texts handed to the backend at once (progress and memory granularity)")

    @field_validator("calibrate")
    @classmethod
    def _inputs(cls, value: bool | list[str]) -> bool | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("give at least one content-free input, or true for ['N/A']")
        return value


class AnnotateConfig(LabelingConfig):
    """What to label (``input``) and how."""

    input: InputConfig


class AnnotateRecipe(JobRecipe):
    """A recipe for ``kdforge annotate``."""

    annotate: AnnotateConfig


@dataclass
class Row:
    """One input text's annotation."""

    id: int
    text: str
    status: str  # ok | unknown | failed | empty
    label: str | None
    probs: list[float] | None
    confidence: float | None
    answer: str | None
    reason: str | None
    truncated: bool
    gold: str | None


def load_recipe(tree: dict[str, Any], source: str = "recipe") -> AnnotateRecipe:
    """Validate an annotate recipe."""
    return validate_job(AnnotateRecipe, tree, source)


def read_input(cfg: InputConfig, seed: int) -> tuple[list[int], list[str], list[str | None] | None]:
    """Row ids, texts and gold labels (None where a row has none) of the input, subset by ``limit``."""
    from kdforge.data.files.source import read_source

    source = read_source("annotate.input.path", cfg.path)
    texts = source.column(cfg.text_column).to_pylist()
    gold = None
    if cfg.gold_column is not None:
        gold = [None if g is None or str(g).strip() == "" else str(g).strip() for g in source.column(cfg.gold_column)
                .to_pylist()]  # fmt: skip
    ids = list(range(len(texts)))
    if cfg.limit is not None and cfg.limit < len(ids):
        ids = sorted(np.random.default_rng(seed).permutation(len(ids))[: cfg.limit].tolist())
    return (
        ids,
        [texts[i] if isinstance(texts[i], str) else "" for i in ids],
        None if gold is None else [gold[i] for i in ids],
    )


def resolve_method(method: str, backend: object) -> str:
    """``auto``: similarity for an embedding teacher, label scoring in process, first-token logprobs over HTTP."""
    kind = type(backend).__name__
    if method == "auto":
        return {"EmbeddingBackend": "similarity", "LocalBackend": "score"}.get(kind, "logprobs")
    if (method == "similarity") != (kind == "EmbeddingBackend"):
        raise ConfigError(
            f"annotate.method={method!r} does not fit teacher kind {kind.removesuffix('Backend').lower()}: "
            "an embedding teacher takes similarity (or auto), an LLM teacher score, logprobs, vote or answer"
        )
    return method


def check_labels(cfg: LabelingConfig, where: str) -> LabelSet:
    """The label set, with every few-shot example's label checked against it."""
    labels = LabelSet.parse(cfg.labels)
    for i, shot in enumerate(cfg.prompt.few_shot):
        if shot.get("label") not in labels.names:
            raise ConfigError(f"{where}.prompt.few_shot[{i}].label={shot.get('label')!r} is not in the label set")
    return labels


class Labeler:
    """A backend + method + (optional) calibration: texts in, outcomes out. Calibrates once, on first use."""

    def __init__(self, cfg: LabelingConfig, backend: Any, seed: int, similarity_temperature: float = 0.05):
        self.cfg = cfg
        self.labels = LabelSet.parse(cfg.labels)
        self.backend = backend
        self.method = resolve_method(cfg.method, backend)
        self.ctx = MethodContext(
            backend, self.labels, cfg.prompt, cfg.samples, cfg.temperature, cfg.top_logprobs, cfg.max_tokens, seed,
            similarity_temperature,
        )  # fmt: skip
        self.run = METHODS.get(self.method)
        fit = getattr(backend, "fit_centroids", None)
        if fit is not None and cfg.prompt.few_shot:
            # An embedding teacher's few-shot examples become label centroids (a prompt has no place for them).
            shots = cfg.prompt.few_shot
            fit([s["text"] for s in shots], [self.labels.index(s["label"]) for s in shots], len(self.labels))
        self.content_free: np.ndarray | None = None
        if cfg.calibrate:
            if self.method in ("answer", "vote"):
                raise ConfigError(
                    f"calibrate: method {self.method!r} gives one-hot or vote-share distributions, which contextual "
                    "calibration cannot correct; use score or logprobs, or calibrate: false"
                )
            inputs = ["N/A"] if cfg.calibrate is True else list(cfg.calibrate)
            free = [o.probs for o in self.run(self.ctx, inputs) if o.probs is not None]
            if not free:
                raise ConfigError("calibrate: the teacher gave no distribution for any content-free input")
            self.content_free = content_free_floor(np.mean(free, axis=0))

    def label(self, texts: list[str], show: bool = False) -> list[Outcome]:
        """Outcomes for ``texts`` (calibrated when asked); empty texts are not sent."""
        outcomes = _label_all(self.ctx, self.run, texts, self.cfg.batch, show and enabled(), self.backend)
        if self.content_free is not None:
            for o in outcomes:
                if o.probs is not None:
                    o.probs = calibrate(o.probs, self.content_free)
        return outcomes


def annotate(recipe: AnnotateRecipe, out: Path | None = None, show: bool = True) -> dict[str, Any]:
    """Run the job; returns its summary (also written to ``summary.json``)."""
    cfg = recipe.annotate
    labels = check_labels(cfg, "annotate")
    ids, texts, gold = read_input(cfg.input, recipe.seed)
    if gold is not None:
        unknown = next((g for g in gold if g is not None and g not in labels.names), None)
        if unknown is not None:
            raise ConfigError(
                f"annotate.input.gold_column={cfg.input.gold_column!r} holds {unknown!r}, which is not in the label "
                f"set ({', '.join(labels.names)})"
            )
    out = out or output_folder(recipe)
    cache = open_cache(recipe.cache)
    backend = build_backend(recipe.teacher, cache)
    started = time.perf_counter()
    try:
        labeler = Labeler(cfg, backend, recipe.seed, getattr(recipe.teacher, "temperature", 0.05))
        outcomes = labeler.label(texts, show)
    finally:
        backend.close()
        if cache is not None:
            cache.close()
    rows = _rows(ids, texts, gold, outcomes, labels, cfg.prompt.max_chars)
    return _write(out, recipe, labels, rows, labeler, time.perf_counter() - started)


def _label_all(ctx: MethodContext, run: Any, texts: list[str], batch: int, show: bool, backend: Any) -> list[Outcome]:
    outcomes: list[Outcome | None] = [None] * len(texts)
    todo = [i for i, t in enumerate(texts) if t.strip()]
    with bar("annotate", len(texts), show) as progress:
        if progress is not None:
            progress.advance(0, len(texts) - len(todo))  # empty texts: nothing to ask
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            for i, outcome in zip(chunk, run(ctx, [texts[i] for i in chunk]), strict=True):
                outcomes[i] = outcome
            if progress is not None:
                progress.update(0, advance=len(chunk), info=usage_line(asdict(backend.usage)))
    return [o if o is not None else Outcome(None, failed="empty text") for o in outcomes]


def _rows(
    ids: list[int],
    texts: list[str],
    gold: list[str | None] | None,
    outcomes: list[Outcome],
    labels: LabelSet,
    max_chars: int,
) -> list[Row]:
    rows = []
    for n, (i, text, outcome) in enumerate(zip(ids, texts, outcomes, strict=True)):
        probs = outcome.probs
        if not text.strip():
            status = "empty"
        elif outcome.failed is not None:
            status = "failed"
        else:
            status = "ok" if probs is not None else "unknown"
        best = int(np.argmax(probs)) if probs is not None else None
        rows.append(
            Row(
                id=i, text=text, status=status, label=None if best is None else labels.names[best],
                probs=None if probs is None else [float(p) for p in probs],
                confidence=None if probs is None else float(probs[best]),
                answer=outcome.answer, reason=outcome.failed, truncated=clip(text, max_chars)[1],
                gold=None if gold is None else gold[n],
            )
        )  # fmt: skip
    return rows


def _write(
    out: Path,
    recipe: AnnotateRecipe,
    labels: LabelSet,
    rows: list[Row],
    labeler: Labeler,
    seconds: float,
) -> dict[str, Any]:
    import pyarrow as pa

    from kdforge.sealed_parquet import write_sealed_table
    from kdforge.teachers.annotations import LABELS_KEY

    meta = {LABELS_KEY: json.dumps(list(labels.names)).encode()}
    records = [asdict(r) for r in rows]
    table = pa.Table.from_pylist(records).replace_schema_metadata(meta)
    write_sealed_table(out / "annotations.parquet", table)
    atomic_write_text(out / "annotations.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    labeled = [
        {
            "text": r.text,
            "label": r.label,
            "probs": r.probs,
            "confidence": r.confidence,
            "source_id": r.id,
            "gold": r.gold,
        }
        for r in rows
        if r.status == "ok"
    ]
    if labeled:
        lt = pa.Table.from_pylist(labeled).replace_schema_metadata(meta)
        write_sealed_table(out / "labeled.parquet", lt)
    else:  # never leave an earlier run's training file beside this run's summary
        (out / "labeled.parquet").unlink(missing_ok=True)
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "unknown", "failed", "empty")}
    backend, method, content_free = labeler.backend, labeler.method, labeler.content_free
    usage = asdict(backend.usage)
    summary: dict[str, Any] = {
        "name": recipe.name,
        "teacher": backend.fingerprint,
        "method": method,
        "fallback_to_vote": labeler.ctx.fallbacks,
        "labels": list(labels.names),
        "verbalizers": list(labels.verbalizers),
        "calibration": None if content_free is None else [float(p) for p in content_free],
        "rows": len(rows),
        "counts": counts,
        "usage": usage,
        "seconds": round(seconds, 3),
        "texts_per_second": round(len(rows) / seconds, 3) if seconds > 0 else None,
        "predicted": {n: sum(r.label == n for r in rows) for n in labels.names},
        "files": {
            "annotations": str(out / "annotations.parquet"),
            "labeled": str(out / "labeled.parquet") if labeled else None,
        },
    }
    if any(r.gold is not None for r in rows):
        summary["agreement"] = _agreement(out, rows, labels, recipe.name)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def _agreement(out: Path, rows: list[Row], labels: LabelSet, name: str) -> dict[str, Any]:
    from kdforge.llm.agreement import agreement, plot_coverage

    with_gold = [r for r in rows if r.gold is not None]
    report = agreement(
        [labels.index(r.gold) for r in with_gold],  # type: ignore[arg-type]
        [None if r.label is None else labels.index(r.label) for r in with_gold],
        [r.confidence for r in with_gold],
        list(labels.names),
    )
    atomic_write_text(out / "agreement.json", json.dumps(report, indent=2))
    if report.get("coverage_curve"):
        plot_coverage(report["coverage_curve"], out / "coverage.png", f"{name}: accuracy vs coverage")
    return report
