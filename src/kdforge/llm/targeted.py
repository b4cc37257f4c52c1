"""Targeted data for the teaching loop: the pool texts nearest the student's errors, or new examples written near them.

Active selection ranks an unlabeled pool by TF-IDF cosine similarity to the dev examples the student got wrong (cheap,
no model); LLM2LLM-style generation asks the teacher for a new example like each wrong one, labelled with its gold
label.
The controls pick the same number of pool texts, or seed examples, at random.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kdforge.llm.backend import GenParams, generate_each
from kdforge.llm.generate import clean
from kdforge.llm.labels import fill


def nearest(queries: Sequence[str], pool: Sequence[str], available: np.ndarray, count: int) -> list[int]:
    """``count`` pool positions (of ``available``) nearest the queries, taken round-robin so every query gets some."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if count <= 0 or not len(available) or not queries:
        return []
    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=1, stop_words="english").fit(list(pool) + list(queries))
    candidates = vectorizer.transform([pool[i] for i in available])
    similarity = (vectorizer.transform(list(queries)) @ candidates.T).toarray()  # rows: queries
    order = np.argsort(-similarity, axis=1, kind="stable")
    chosen: list[int] = []
    taken: set[int] = set()
    depth = 0
    while len(chosen) < min(count, len(available)) and depth < len(available):
        for row in order:
            pick = int(available[row[depth]])
            if pick not in taken:
                taken.add(pick)
                chosen.append(pick)
                if len(chosen) == count:
                    break
        depth += 1
    return chosen


def at_random(available: np.ndarray, count: int, seed: int) -> list[int]:
    """``count`` pool positions drawn uniformly from ``available``."""
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(available, size=min(count, len(available)), replace=False))


def write_near(
    backend: object,
    examples: Sequence[tuple[str, str]],
    count: int,
    template: str,
    seed: int,
    temperature: float,
    max_tokens: int,
) -> list[tuple[str, str, int]]:
    """``count`` new texts, each written after one (text, label description) example, cycling through them.

    Returns (new text, label description, example position); failed requests are left out.
    """
    if not examples or count <= 0:
        return []
    chat = getattr(backend, "chat_prompt", None)
    prompts = []
    for k in range(count):
        text, description = examples[k % len(examples)]
        body = fill(template, "teach.write.template", text=text[:1500], description=description)
        messages = [{"role": "user", "content": body}]
        prompts.append(chat(messages) if chat is not None else messages)
    params = GenParams(max_tokens=max_tokens, temperature=temperature, top_p=0.95, n=1, seed=seed)
    out = []
    for k, answers in enumerate(generate_each(backend, prompts, params, seed)):
        new = clean(answers[0].text) if isinstance(answers, list) and answers else ""
        if new:
            out.append((new, examples[k % len(examples)][1], k % len(examples)))
    return out
