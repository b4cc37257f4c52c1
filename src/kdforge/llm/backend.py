"""The one interface every LLM-teacher backend implements: score continuations, generate text, describe itself."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class GenParams:
    """How to sample: ``n`` completions per prompt, at ``temperature`` (0 = greedy), at most ``max_tokens`` each."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass
class Completion:
    """One generated text; ``top_logprobs``: candidate first tokens → log-probabilities, when the backend has them."""

    text: str
    top_logprobs: dict[str, float] | None = None
    finish_reason: str = "stop"


@dataclass
class Usage:
    """Tokens and requests a backend spent (cached answers cost nothing and are counted apart)."""

    requests: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    retries: int = 0
    bounded: int = 0  # next-token label scoring: tokens below the top log-probabilities (their value is a bound)
    per_server: dict[str, int] = field(default_factory=dict)


class Backend(Protocol):
    """A teacher backend: ``served`` (HTTP), ``local`` (a causal LM in process) or ``embedding``."""

    fingerprint: str  # identifies model + settings in cache keys and summaries
    usage: Usage

    def score(self, prompts: list[str], continuations: list[str]) -> np.ndarray:
        """[len(prompts), len(continuations)]: summed log-probability of each continuation's tokens after each prompt
        (for an embedding backend: cosine similarity of the prompt to each continuation). NaN marks a failed row."""
        ...

    def generate(self, prompts: list[str], params: GenParams) -> list[Any]:
        """``params.n`` completions per prompt; a failed prompt gets None or its failure (an exception whose text is
        the reason) instead of a list."""
        ...

    def close(self) -> None:
        """Release connections, threads, models."""
        ...


def generate_each(backend: Any, prompts: Sequence[Any], params: GenParams, first_seed: int) -> list[Any]:
    """One completion per prompt, prompt i sampled with seed ``first_seed + i`` (equal prompts give different texts,
    each still cacheable), concurrently when the backend has request threads. A failed prompt's entry is not a list:
    None or the failure, whose text is the reason."""

    def one(i: int) -> Any:
        return backend.generate([prompts[i]], replace(params, seed=first_seed + i, n=1))[0]

    run = getattr(backend, "map", None)
    return list(run(one, range(len(prompts)))) if run is not None else [one(i) for i in range(len(prompts))]
