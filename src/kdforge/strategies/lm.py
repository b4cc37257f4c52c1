"""The causal-LM pieces of a run: where responses come from, and greedy samples for the report."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdforge.data.base import DataBundle
from kdforge.lm.sources import ResponseSource, cache_key, prompts_of
from kdforge.recipe import Recipe
from kdforge.teachers.base import evaluation_model

SAMPLE_PROMPTS = 3  # test rows whose first tokens prompt the greedy samples in the run report
SAMPLE_PROMPT_TOKENS = 16


def _special_ids(bundle: DataBundle) -> tuple[int, int | None]:
    from kdforge.data.austen_lm import load_tokenizer

    tok = load_tokenizer(bundle.tokenizer) if bundle.tokenizer else None
    eos = getattr(tok, "eos_token_id", None)
    pad = getattr(tok, "pad_token_id", None)
    return (pad if pad is not None else (eos if eos is not None else 0)), eos


def response_source(recipe: Recipe, bundle: DataBundle, student: nn.Module, teacher: Any) -> ResponseSource | None:
    """The recipe's ``responses`` source (None for the data set's own responses)."""
    cfg = recipe.responses
    if cfg is None or cfg.source == "dataset":
        return None
    network = evaluation_model(teacher)
    pad, eos = _special_ids(bundle)
    key = cache_key(
        getattr(teacher, "fingerprint", ""),
        bundle.fingerprint,
        cfg.prompt_tokens,
        cfg.max_new_tokens,
        cfg.teacher_temperature,
        recipe.seed if cfg.teacher_temperature > 0 else None,
    )
    return ResponseSource(cfg, student, network, pad, eos, recipe.seed, key)


def lm_samples(student: nn.Module, teacher: nn.Module | None, bundle: DataBundle) -> list[dict[str, str]]:
    """Greedy continuations by the student (and teacher) of the first tokens of a few fixed test rows."""
    from kdforge.data.austen_lm import load_tokenizer
    from kdforge.evaluate.lm import greedy_samples

    tok = load_tokenizer(bundle.tokenizer)
    rows = bundle.test.__getitems__(list(range(min(SAMPLE_PROMPTS, len(bundle.test)))))
    # A prompt/response row is prompted with its prompt; plain text with its first tokens.
    prompts = [tok.decode(p.tolist()) for p in prompts_of(rows, SAMPLE_PROMPT_TOKENS)]
    student_text = greedy_samples(student.to("cpu"), tok, prompts)
    teacher_text = greedy_samples(teacher.to("cpu"), tok, prompts) if teacher is not None else [None] * len(prompts)
    return [
        {"prompt": p, "student": s, **({"teacher": t} if t is not None else {})}
        for p, s, t in zip(prompts, student_text, teacher_text, strict=True)
    ]
