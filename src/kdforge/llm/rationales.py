"""``kdforge generate`` with a ``rationales`` section: Fine-tune-CoT — several step-by-step rationales per labelled
example, kept only when the rationale's final answer is the gold label; written as prompt → response training data
(rationale + answer) for a student language model.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kdforge.errors import ConfigError
from kdforge.files import atomic_write_text
from kdforge.llm.backend import GenParams
from kdforge.llm.job import JobRecipe, build_backend, open_cache, output_folder, validate_job
from kdforge.llm.labels import LabelSet, clip, fill
from kdforge.progress import bar, enabled


class RationalePrompt(BaseModel):
    """Zero-shot-CoT style prompt (Kojima et al.): the question, then a cue that starts the reasoning."""

    model_config = ConfigDict(extra="forbid")
    system: str | None = None
    template: str = (
        "Which of these categories fits the text: {labels}?\nText: {text}\n"
        "Think step by step, then finish with 'Answer: <category>'."
    )
    student_template: str = Field("{text}", description="the student's prompt column: {text} and {labels} filled in")
    max_chars: int = Field(1500, gt=0)


class LabeledInput(BaseModel):
    """Labelled examples: a file, its text and label columns, the first ``limit`` usable rows."""

    model_config = ConfigDict(extra="forbid")
    path: str
    text_column: str = "text"
    label_column: str = "label"
    limit: int | None = Field(None, gt=0)


class RationalesConfig(BaseModel):
    """Where the labelled examples are, how many rationales each, and how to sample them."""

    model_config = ConfigDict(extra="forbid")
    input: LabeledInput
    labels: list[str] | dict[str, Any]
    per_example: int = Field(4, ge=1, le=64, description="rationales sampled per example (diverse reasoning)")
    prompt: RationalePrompt = Field(default_factory=RationalePrompt)
    temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(256, ge=8)


class RationalesRecipe(JobRecipe):
    """A recipe for ``kdforge generate`` producing rationales."""

    rationales: RationalesConfig


def load_recipe(tree: dict[str, Any], source: str = "recipe") -> RationalesRecipe:
    """Validate a rationales recipe."""
    return validate_job(RationalesRecipe, tree, source)


# "Answer: X" on a line of its own (optionally "Final answer is: X"); "this answers your question" is no answer.
_ANSWER = re.compile(r"^\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is)?\s*[:\-]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


def final_answer(text: str, labels: LabelSet) -> int | None:
    """The label after the last 'Answer:' in a rationale (None when there is none, or it names no single label)."""
    found = _ANSWER.findall(text)
    if not found:
        return None
    return labels.parse_answer(found[-1].strip())


def reasoning(text: str) -> str:
    """A rationale up to its last 'Answer:' line (the line the verdict was read from)."""
    matches = list(_ANSWER.finditer(text))
    return (text[: matches[-1].start()] if matches else text).strip()


def student_prompt(template: str, text: str, label_list: str) -> str:
    """The student's prompt column for one example."""
    return fill(template, "rationales.prompt.student_template", text=text, labels=label_list)


def rationales(recipe: RationalesRecipe, out: Path | None = None, show: bool = True) -> dict[str, Any]:
    """Sample, check each rationale's final answer against the gold label, write prompt/response data."""
    from kdforge.data.files.source import read_source

    cfg = recipe.rationales
    labels = LabelSet.parse(cfg.labels)
    spec = cfg.input
    source = read_source("rationales.input.path", spec.path)
    texts = source.column(spec.text_column).to_pylist()
    gold = [None if g is None else str(g).strip() for g in source.column(spec.label_column).to_pylist()]
    ids = [i for i, g in enumerate(gold) if g in labels.names and isinstance(texts[i], str) and texts[i].strip()]
    if spec.limit:
        ids = ids[: spec.limit]
    if not ids:
        raise ConfigError(f"rationales.input.path={spec.path!r}: no row has a text and a label in the label set")
    out = out or output_folder(recipe)
    cache = open_cache(recipe.cache)
    backend = build_backend(recipe.teacher, cache)
    label_list = ", ".join(labels.verbalizers)
    records = []
    started = time.perf_counter()
    try:
        chat = getattr(backend, "chat_prompt", None)
        with bar("rationales", len(ids), show and enabled()) as progress:
            for i in ids:
                body = fill(
                    cfg.prompt.template,
                    "rationales.prompt.template",
                    text=clip(texts[i], cfg.prompt.max_chars)[0],
                    labels=label_list,
                )
                messages = [{"role": "system", "content": cfg.prompt.system}] if cfg.prompt.system else []
                messages.append({"role": "user", "content": body})
                prompt = chat(messages) if chat is not None else messages
                params = GenParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, n=cfg.per_example,
                                   seed=recipe.seed)  # fmt: skip
                answers = backend.generate([prompt], params)[0]
                answers = answers if isinstance(answers, list) else []
                for k, answer in enumerate(answers):
                    picked = final_answer(answer.text, labels)
                    correct = picked is not None and labels.names[picked] == gold[i]
                    records.append(
                        {"id": i, "sample": k, "label": gold[i], "rationale": answer.text.strip(),
                         "answer": None if picked is None else labels.names[picked], "kept": correct}
                    )  # fmt: skip
                if progress is not None:
                    progress.update(0, advance=1)
    finally:
        backend.close()
        if cache is not None:
            cache.close()
    return _write(out, recipe, labels, texts, records, backend, time.perf_counter() - started)


def _write(out: Path, recipe: RationalesRecipe, labels: LabelSet, texts: list, records: list, backend: Any,
           seconds: float) -> dict[str, Any]:  # fmt: skip
    import pyarrow as pa

    from kdforge.sealed_parquet import write_sealed_table

    cfg = recipe.rationales
    label_list = ", ".join(labels.verbalizers)
    atomic_write_text(out / "candidates.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    kept = []
    for r in records:
        if not r["kept"]:
            continue
        rationale = reasoning(r["rationale"])
        verbal = labels.verbalizers[labels.index(r["label"])]
        kept.append({
            "prompt": student_prompt(cfg.prompt.student_template, texts[r["id"]], label_list),
            "response": f"{rationale}\nAnswer: {verbal}".strip(),
            "label": r["label"], "source_id": r["id"],
        })  # fmt: skip
    if not kept:
        raise ConfigError(
            f"rationales: no rationale of {len(records)} ended in the gold label (see {out / 'candidates.jsonl'}); "
            "a stronger teacher, more samples per example or a clearer prompt is needed"
        )
    write_sealed_table(out / "rationales.parquet", pa.Table.from_pylist(kept))
    atomic_write_text(out / "rationales.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    examples = {r["id"] for r in records}
    summary = {
        "name": recipe.name,
        "teacher": backend.fingerprint,
        "examples": len(examples),
        "rationales": len(records),
        "kept": len(kept),
        "examples_with_a_kept_rationale": len({r["source_id"] for r in kept}),
        "usage": asdict(backend.usage),
        "seconds": round(seconds, 3),
        "files": {"rationales": str(out / "rationales.parquet"), "candidates": str(out / "candidates.jsonl")},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary
