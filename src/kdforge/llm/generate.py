"""``kdforge generate``: Fabricator-style synthesis — N examples of each label, optionally conditioned on seed examples,
de-duplicated (exact and near) and kept only when the teacher, re-annotating them, agrees with the label asked for.

Output in ``output_dir/name/``: ``generated.jsonl`` (every candidate with its fate), ``dataset.parquet`` /
``dataset.jsonl`` (the kept ``text, label`` rows, loadable by ``datasets`` and the ``files`` data set) and
``summary.json``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kdforge.errors import ConfigError
from kdforge.files import atomic_write_text
from kdforge.llm.backend import GenParams, generate_each
from kdforge.llm.dedup import duplicates
from kdforge.llm.job import JobRecipe, build_backend, open_cache, output_folder, validate_job
from kdforge.llm.labels import LabelSet, clip, fill
from kdforge.llm.summaries import usage_line
from kdforge.progress import bar, enabled


class SeedConfig(BaseModel):
    """Seed examples to condition on: a file with text and label columns; ``per_prompt`` shown in each request."""

    model_config = ConfigDict(extra="forbid")
    path: str
    text_column: str = "text"
    label_column: str = "label"
    per_prompt: int = Field(2, ge=1, le=16)


class GeneratePrompt(BaseModel):
    """The synthesis prompt: ``{label}`` (its verbalizer), ``{description}`` and ``{examples}`` are filled in."""

    model_config = ConfigDict(extra="forbid")
    system: str | None = None
    template: str = "Write one short news article about {description}.{examples}\nWrite only the article."
    example: str = "\n\nExample:\n{text}"
    max_chars: int = Field(600, gt=0, description="a seed example is cut here")


class FilterConfig(BaseModel):
    """Label-consistency filtering: the teacher re-annotates each candidate; kept when it picks the asked label."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    labeling: dict[str, Any] = Field(default_factory=dict, description="how to label: method, prompt, calibrate, ...")
    min_confidence: float = Field(0.0, ge=0, le=1)


class GenerateConfig(BaseModel):
    """What to synthesise, how much, and how to clean it."""

    model_config = ConfigDict(extra="forbid")
    labels: list[str] | dict[str, Any]
    per_label: int = Field(10, ge=1, description="candidates requested per label (before filtering)")
    prompt: GeneratePrompt = Field(default_factory=GeneratePrompt)
    seeds: SeedConfig | None = None
    temperature: float = Field(0.9, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(160, ge=1)
    min_chars: int = Field(20, ge=0, description="shorter candidates are dropped")
    near_duplicate: float = Field(0.7, gt=0, le=1, description="Jaccard of word 3-grams at which two are the same")
    filter: FilterConfig = Field(default_factory=FilterConfig)


class GenerateRecipe(JobRecipe):
    """A recipe for ``kdforge generate``."""

    generate: GenerateConfig


def load_recipe(tree: dict[str, Any], source: str = "recipe") -> GenerateRecipe:
    """Validate a generate recipe."""
    return validate_job(GenerateRecipe, tree, source)


def _seed_examples(cfg: SeedConfig, labels: LabelSet) -> dict[int, list[str]]:
    from kdforge.data.files.source import read_source

    source = read_source("generate.seeds.path", cfg.path)
    texts = source.column(cfg.text_column).to_pylist()
    names = source.column(cfg.label_column).to_pylist()
    by_label: dict[int, list[str]] = {i: [] for i in range(len(labels))}
    for text, name in zip(texts, names, strict=True):
        if name is not None and str(name) in labels.names and isinstance(text, str) and text.strip():
            by_label[labels.index(str(name))].append(text)
    return by_label


def requests_for(cfg: GenerateConfig, labels: LabelSet, seed: int, seeds: dict[int, list[str]] | None) -> list[dict]:
    """One request per candidate: its label, its prompt (with seed examples drawn by ``seed``)."""
    rng = np.random.default_rng(seed)
    out = []
    for label in range(len(labels)):
        for k in range(cfg.per_label):
            shown = ""
            if seeds is not None and seeds[label]:
                pool = seeds[label]
                picks = rng.choice(len(pool), size=min(cfg.seeds.per_prompt, len(pool)), replace=False)  # type: ignore[union-attr]
                shown = "".join(
                    fill(
                        cfg.prompt.example, "generate.prompt.example", text=clip(pool[int(p)], cfg.prompt.max_chars)[0]
                    )
                    for p in picks
                )
            text = fill(
                cfg.prompt.template, "generate.prompt.template", label=labels.verbalizers[label],
                description=labels.descriptions[label], examples=shown,
            )  # fmt: skip
            messages = [{"role": "system", "content": cfg.prompt.system}] if cfg.prompt.system else []
            out.append({"label": label, "k": k, "messages": [*messages, {"role": "user", "content": text}]})
    return out


_PREAMBLE = re.compile(r"^(sure|here is|here's|certainly)[^\n]*:\s*\n+", re.IGNORECASE)


def clean(text: str) -> str:
    """A generated text without a chatty preamble ("Here is an article:") or surrounding quotes and spaces."""
    text = _PREAMBLE.sub("", text.strip())
    return text.strip().strip('"').strip()


def generate(recipe: GenerateRecipe, out: Path | None = None, show: bool = True) -> dict[str, Any]:
    """Synthesise, de-duplicate, filter; write the data set; return the summary."""
    cfg = recipe.generate
    labels = LabelSet.parse(cfg.labels)
    seeds = _seed_examples(cfg.seeds, labels) if cfg.seeds is not None else None
    jobs = requests_for(cfg, labels, recipe.seed, seeds)
    out = out or output_folder(recipe)
    cache = open_cache(recipe.cache)
    backend = build_backend(recipe.teacher, cache)
    started = time.perf_counter()
    try:
        prompts = [_as_prompt(backend, j["messages"]) for j in jobs]
        params = GenParams(
            max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p, n=1, seed=recipe.seed
        )
        texts: list[str | None] = []
        with bar("generate", len(prompts), show and enabled()) as progress:
            step = 16
            for start in range(0, len(prompts), step):
                # Each candidate its own seed: equal prompts must not give equal texts, and each stays cacheable.
                for answers in generate_each(backend, prompts[start : start + step], params, recipe.seed + start):
                    texts.append(clean(answers[0].text) if isinstance(answers, list) and answers else None)
                if progress is not None:
                    info = usage_line(asdict(backend.usage))
                    progress.update(0, advance=len(prompts[start : start + step]), info=info)
        fates = _fates(texts, cfg)
        if cfg.filter.enabled:
            temperature = getattr(recipe.teacher, "temperature", 0.05)
            verdict = _filter(backend, cfg, labels, recipe.seed, jobs, texts, fates, temperature)
        else:
            verdict = {}
    finally:
        backend.close()
        if cache is not None:
            cache.close()
    return _write(out, recipe, labels, jobs, texts, fates, verdict, backend, time.perf_counter() - started)


def _as_prompt(backend: Any, messages: list[dict[str, str]]) -> Any:
    """Chat messages for a server; a chat-templated (or joined) string for a model in process."""
    chat = getattr(backend, "chat_prompt", None)
    return chat(messages) if chat is not None else messages


def _fates(texts: list[str | None], cfg: GenerateConfig) -> list[str | None]:
    fates: list[str | None] = []
    for text in texts:
        if text is None:
            fates.append("request failed")
        elif len(text) < cfg.min_chars:
            fates.append(f"shorter than {cfg.min_chars} characters")
        else:
            fates.append(None)
    alive = [i for i, f in enumerate(fates) if f is None]
    for i, why in zip(alive, duplicates([texts[i] or "" for i in alive], cfg.near_duplicate), strict=True):
        if why is not None:
            number = int(why.rsplit("#", 1)[1])
            fates[i] = why.replace(f"#{number}", f"#{alive[number]}")
    return fates


def _filter(backend: Any, cfg: GenerateConfig, labels: LabelSet, seed: int, jobs: list[dict], texts: list,
            fates: list, similarity_temperature: float) -> dict[int, tuple[str | None, float | None]]:  # fmt: skip
    """Re-annotate the surviving candidates; returns index → (label the teacher picked, its confidence)."""
    from kdforge.llm.annotate import Labeler, LabelingConfig

    labeling = LabelingConfig(labels=cfg.labels, **cfg.filter.labeling)
    alive = [i for i, f in enumerate(fates) if f is None]
    verdict: dict[int, tuple[str | None, float | None]] = {}
    outcomes = Labeler(labeling, backend, seed, similarity_temperature).label([texts[i] for i in alive])
    for i, outcome in zip(alive, outcomes, strict=True):
        if outcome.probs is None:
            verdict[i] = (None, None)
            fates[i] = "the teacher could not label it"
            continue
        best = int(np.argmax(outcome.probs))
        verdict[i] = (labels.names[best], float(outcome.probs[best]))
        if best != jobs[i]["label"]:
            fates[i] = f"re-annotated as {labels.names[best]}"
        elif outcome.probs[best] < cfg.filter.min_confidence:
            fates[i] = f"re-annotation confidence {outcome.probs[best]:.2f} < {cfg.filter.min_confidence}"
    return verdict


def _write(out: Path, recipe: GenerateRecipe, labels: LabelSet, jobs: list[dict], texts: list, fates: list,
           verdict: dict, backend: Any, seconds: float) -> dict[str, Any]:  # fmt: skip
    import pyarrow as pa

    from kdforge.sealed_parquet import write_sealed_table

    records = []
    for i, (job, text, fate) in enumerate(zip(jobs, texts, fates, strict=True)):
        picked, confidence = verdict.get(i, (None, None))
        records.append(
            {"id": i, "label": labels.names[job["label"]], "text": text, "kept": fate is None, "reason": fate,
             "reannotated": picked, "confidence": confidence}
        )  # fmt: skip
    atomic_write_text(out / "generated.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    kept = [{"text": r["text"], "label": r["label"]} for r in records if r["kept"]]
    if not kept:
        for name in ("dataset.parquet", "dataset.jsonl", "summary.json"):  # no earlier run's data set left behind
            (out / name).unlink(missing_ok=True)
        raise ConfigError(
            f"generate: none of {len(records)} candidates survived (see {out / 'generated.jsonl'}); "
            "loosen generate.near_duplicate / min_chars or the filter"
        )
    write_sealed_table(out / "dataset.parquet", pa.Table.from_pylist(kept))
    atomic_write_text(out / "dataset.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    reasons: dict[str, int] = {}
    for r in records:
        if r["reason"]:
            head = r["reason"].split(" #")[0].split(" as ")[0]
            reasons[head] = reasons.get(head, 0) + 1
    summary = {
        "name": recipe.name,
        "teacher": backend.fingerprint,
        "candidates": len(records),
        "kept": len(kept),
        "kept_per_label": {n: sum(r["label"] == n and r["kept"] for r in records) for n in labels.names},
        "dropped": reasons,
        "usage": asdict(backend.usage),
        "seconds": round(seconds, 3),
        "files": {"dataset": str(out / "dataset.parquet"), "candidates": str(out / "generated.jsonl")},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary
