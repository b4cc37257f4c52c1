"""The ``teaching_loop`` strategy: train the student → evaluate on the dev set → collect its errors and its weakest
labels → the LLM teacher produces targeted data (pool texts nearest the errors, annotated; or new examples written near
them, LLM2LLM-style) → add, retrain. N rounds, per-round metrics, a stopping rule, every round's data in the run folder.

``teach.selection: random`` is the control: the same number of examples per round, chosen without looking at errors.
Each round retrains the student from its initial weights on all data so far (as LLM2LLM does), so rounds compare
data, not training time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError

from kdforge.engine.rundir import RunDir
from kdforge.errors import ConfigError
from kdforge.files import atomic_write_text
from kdforge.llm.targeted import at_random, nearest, write_near
from kdforge.recipe import Recipe, StrategyConfig, TeacherConfig, format_validation_error, teacher_section
from kdforge.registry import STRATEGIES
from kdforge.strategies.common import SUMMARY, RunOutcome, finished
from kdforge.strategies.offline import offline


class PoolConfig(BaseModel):
    """Unlabeled texts the teacher may annotate (active selection)."""

    model_config = ConfigDict(extra="forbid")
    path: str
    text_column: str = "text"


class WriteConfig(BaseModel):
    """LLM2LLM-style generation near an error: ``{text}`` (the wrong example), ``{description}`` (its gold label)."""

    model_config = ConfigDict(extra="forbid")
    template: str = (
        "Here is a news article about {description}:\n\n{text}\n\n"
        "Write a new, different short news article about {description}. Write only the article."
    )
    temperature: float = Field(0.9, ge=0)
    max_tokens: int = Field(160, ge=8)


class StopConfig(BaseModel):
    """Stop when the dev metric has not improved by ``min_gain`` for ``patience`` rounds."""

    model_config = ConfigDict(extra="forbid")
    metric: str = "accuracy"
    min_gain: float = 0.0
    patience: int = Field(1, ge=1)


class TeachConfig(BaseModel):
    """The ``teach`` section of a teaching_loop recipe."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(3, ge=1, le=100)
    per_round: int = Field(50, ge=1, description="examples added per round")
    source: Literal["pool", "generate"] = "pool"
    selection: Literal["errors", "random"] = "errors"
    pool: PoolConfig | None = None
    teacher: SerializeAsAny[TeacherConfig]
    labeling: dict[str, Any] = Field(description="how the teacher labels: labels, prompt, method, calibrate, ...")
    write: WriteConfig = Field(default_factory=WriteConfig)
    stop: StopConfig = Field(default_factory=StopConfig)
    cache: str | None = "~/.cache/kdforge/llm/requests.sqlite"


def teach_section(recipe: Recipe) -> TeachConfig:
    """The recipe's ``teach`` section, validated (the teacher by its kind)."""
    from kdforge.llm.annotate import LabelingConfig

    if recipe.teach is None:
        raise ConfigError("strategy teaching_loop needs a teach section (teacher, labeling, rounds, per_round, ...)")
    try:
        cfg = TeachConfig.model_validate(recipe.teach)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "recipe", root=TeachConfig, prefix=("teach",))) from None
    try:
        LabelingConfig.model_validate(cfg.labeling)
    except ValidationError as err:
        where = ("teach", "labeling")
        raise ConfigError(format_validation_error(err, "recipe", root=LabelingConfig, prefix=where)) from None
    if cfg.source == "pool" and cfg.pool is None:
        raise ConfigError("teach.pool: source=pool needs a pool of unlabeled texts (teach.pool.path)")
    params = recipe.data.params
    if recipe.data.name != "files" or not params.get("val") or not params.get("labels"):
        raise ConfigError(
            "teaching_loop: data must be `files` with data.params.val (the dev set whose errors drive the teacher) "
            "and data.params.labels (the label set, in the teacher's order)"
        )
    return cfg.model_copy(update={"teacher": teacher_section(cfg.teacher, "recipe")})


def _rows(path: str, text_column: str, label_column: str | None) -> tuple[list[str], list[str | None]]:
    from kdforge.data.files.source import read_source

    source = read_source(path, path)
    texts = [t if isinstance(t, str) else "" for t in source.column(text_column).to_pylist()]
    labels = [None] * len(texts) if label_column is None else source.column(label_column).to_pylist()
    return texts, [None if v is None else str(v).strip() for v in labels]


def _write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa

    from kdforge.sealed_parquet import write_sealed_table

    write_sealed_table(path, pa.Table.from_pylist(rows))


def split_errors(outcome: RunOutcome, split: str, names: list[str]) -> tuple[list[int], dict[str, float]]:
    """Rows of ``split`` (val or train) the student got wrong (row numbers in that file) and its recall per label."""
    from kdforge.data import make_loader
    from kdforge.evaluate.predict import predict

    data = getattr(outcome.bundle, split)
    param = next(outcome.student.parameters(), None)
    device = param.device if param is not None else "cpu"
    logits, labels, index = predict(outcome.student, make_loader(data, 256, shuffle=False, seed=0), device=device)
    assert labels is not None
    wrong = (logits.argmax(-1) != labels).numpy()
    recall = {}
    for i, name in enumerate(names):
        mask = (labels == i).numpy()
        recall[name] = float(1 - wrong[mask].mean()) if mask.any() else float("nan")
    return [int(j) for j in index.numpy()[wrong]], recall


@STRATEGIES.register("teaching_loop")
def teaching_loop(recipe: Recipe, run_dir: RunDir, resume: bool = False) -> RunOutcome:
    """Rounds of train → find errors → teacher adds targeted data; returns the last round's student."""
    from kdforge.llm.annotate import Labeler, LabelingConfig
    from kdforge.llm.job import build_backend, open_cache

    if resume and (done := finished(run_dir)) is not None:
        return RunOutcome(done)
    cfg = teach_section(recipe)
    labeling = LabelingConfig.model_validate(cfg.labeling)
    params = dict(recipe.data.params)
    names = [str(n) for n in params["labels"]]
    text_col, label_col = params.get("text_column", "text"), params.get("label_column", "label")
    train_texts, train_labels = _rows(params["train"], text_col, label_col)
    dev_texts, dev_labels = _rows(params["val"], text_col, label_col)
    data = [
        {"text": t, "label": y, "origin": "seed", "round": 0} for t, y in zip(train_texts, train_labels, strict=True)
    ]
    pool_texts: list[str] = []
    if cfg.source == "pool":
        pool_texts, _ = _rows(cfg.pool.path, cfg.pool.text_column, None)  # type: ignore[union-attr]
    used = np.zeros(len(pool_texts), dtype=bool)
    cache = open_cache(cfg.cache)
    backend = build_backend(cfg.teacher, cache)
    rounds: list[dict[str, Any]] = []
    best, stale, outcome, kept = -np.inf, 0, None, None
    try:
        labeler = Labeler(labeling, backend, recipe.seed, getattr(cfg.teacher, "temperature", 0.05))
        if list(labeler.labels.names) != names:
            raise ConfigError(
                f"teach.labeling.labels {list(labeler.labels.names)} differ from data.params.labels {names}"
            )
        for r in range(cfg.rounds + 1):
            folder = run_dir.child(f"round-{r}")
            train_file = folder.path / "train.parquet"
            if folder.main:
                _write_table(train_file, data)
            variant = recipe.model_copy(
                update={"name": f"{recipe.name}-round-{r}", "strategy": StrategyConfig(), "teach": None,
                        "data": recipe.data.model_copy(update={"params": {**params, "train": str(train_file)}})}
            )  # fmt: skip
            outcome = offline(variant, folder)
            errors, recall = split_errors(outcome, "val", names)
            dev_metric = _metric(outcome.summary, cfg.stop.metric, recipe.train.select.mode)
            record = {
                "round": r, "train_size": len(data), "dev": dev_metric, "test": outcome.summary.get("test"),
                "dev_errors": len(errors), "recall": recall,
            }  # fmt: skip
            rounds.append(record)
            if dev_metric > best + cfg.stop.min_gain:
                best, stale, kept = dev_metric, 0, (r, outcome)
            elif r:
                stale += 1
            if r == cfg.rounds or stale >= cfg.stop.patience:
                record["stopped"] = "rounds done" if r == cfg.rounds else f"no gain for {stale} round(s)"
                break
            if cfg.source == "generate":
                # LLM2LLM writes near the *training* examples the student gets wrong: writing near dev examples
                # would put paraphrases of the dev set into training and inflate the dev metric that stops the loop.
                wrong, _ = split_errors(outcome, "train", names)
                examples = [(data[j]["text"], data[j]["label"]) for j in wrong]
                added = _written(cfg, labeler, backend, examples, recall, data, names, recipe.seed + r)
            else:
                added = _from_pool(cfg, labeler, errors, recall, dev_texts, dev_labels, pool_texts, used, names,
                                   recipe.seed + r)  # fmt: skip
            for row in added:
                row["round"] = r + 1
            record["added"] = len(added)
            record["added_per_label"] = {n: sum(a["label"] == n for a in added) for n in names}
            if folder.main:
                lines = "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in added)
                atomic_write_text(folder.path / "added.jsonl", lines)
            data = data + [{k: a[k] for k in ("text", "label", "origin", "round")} for a in added]
    finally:
        backend.close()
        if cache is not None:
            cache.close()
    assert outcome is not None and kept is not None
    best_round, outcome = kept  # the student of the best round on the dev set, not merely the last one
    summary = {
        **outcome.summary,
        "name": recipe.name,
        "strategy": "teaching_loop",
        "best_round": best_round,
        "teach": {"source": cfg.source, "selection": cfg.selection, "per_round": cfg.per_round},
        "rounds": rounds,
        "teacher_usage": _usage(backend),
    }
    run_dir.write_json(SUMMARY, summary)
    return RunOutcome(summary, student=outcome.student, teacher=outcome.teacher, bundle=outcome.bundle)


# Checked when the recipe is resolved, before a run folder (and the recipe in it) is written: a teach section the
# strategy would refuse anyway, or a teacher holding a literal API key, never leaves a folder behind.
teaching_loop.check = teach_section  # type: ignore[attr-defined]


def _metric(summary: dict[str, Any], metric: str, mode: str) -> float:
    """The dev metric of the student the round keeps (the last epoch's, or the best one's with select: best)."""
    kept = (summary.get("best") if mode == "best" else None) or summary.get("last") or {}
    value = (kept.get("val") or {}).get(metric)
    if value is None:
        raise ConfigError(f"teach.stop.metric={metric!r}: the dev evaluation reports no such metric")
    return float(value)


def _usage(backend: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(backend.usage)


def _from_pool(cfg: TeachConfig, labeler: Any, errors: list[int], recall: dict[str, float], dev_texts: list[str],
               dev_labels: list[str | None], pool: list[str], used: np.ndarray, names: list[str],
               seed: int) -> list[dict[str, Any]]:  # fmt: skip
    """Pool texts nearest the dev errors (weakest labels first), or random ones for the control, annotated."""
    errors = sorted(errors, key=lambda j: (recall.get(dev_labels[j] or "", 1.0), j))
    available = np.flatnonzero(~used)
    if cfg.selection == "errors" and errors:
        picks = nearest([dev_texts[j] for j in errors], pool, available, cfg.per_round)
    else:
        picks = at_random(available, cfg.per_round, seed)
    used[picks] = True
    added = []
    for i, o in zip(picks, labeler.label([pool[i] for i in picks]), strict=True):
        if o.probs is not None:
            best = int(np.argmax(o.probs))
            added.append({"text": pool[i], "label": names[best], "origin": "pool", "pool_id": int(i),
                          "confidence": float(o.probs[best])})  # fmt: skip
    return added


def _written(cfg: TeachConfig, labeler: Any, backend: Any, examples: list[tuple[str, str]],
             recall: dict[str, float], data: list[dict[str, Any]], names: list[str],
             seed: int) -> list[dict[str, Any]]:  # fmt: skip
    """New examples written after training examples the student gets wrong (weakest labels first), each given that
    example's label; with none wrong, or for the control, after random training examples."""
    rng = np.random.default_rng(seed)
    if cfg.selection != "errors" or not examples:
        rows = [int(j) for j in rng.permutation(len(data))[: max(len(examples), 1)]]
        examples = [(data[j]["text"], data[j]["label"]) for j in rows]
    examples = sorted(examples, key=lambda e: recall.get(e[1], 1.0))
    descriptions = dict(zip(names, labeler.labels.descriptions, strict=True))
    written = write_near(
        backend, [(t, descriptions[y]) for t, y in examples], cfg.per_round, cfg.write.template, seed,
        cfg.write.temperature, cfg.write.max_tokens,
    )  # fmt: skip
    return [
        {"text": t, "label": examples[k][1], "origin": "generated", "after": examples[k][0][:200]}
        for t, _, k in written
    ]
