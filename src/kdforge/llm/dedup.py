"""Exact and near-duplicate removal for generated texts (word-shingle Jaccard similarity)."""

from __future__ import annotations

import re

from kdforge.llm.labels import normalise


def shingles(text: str, size: int = 3) -> frozenset[str]:
    """The set of ``size``-word shingles of a normalised text (the words themselves when it is shorter)."""
    words = re.findall(r"\w+", normalise(text))
    if len(words) < size:
        return frozenset(words)
    return frozenset(" ".join(words[i : i + size]) for i in range(len(words) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def duplicates(texts: list[str], threshold: float, size: int = 3) -> list[str | None]:
    """For each text, why it is dropped (``exact duplicate of #i`` / ``near duplicate of #i``) or None to keep it.

    The first of a group is kept. Near: Jaccard of word shingles >= ``threshold``. Quadratic in kept texts, with a
    size bound (|a ∩ b| <= min(|a|, |b|)) that skips most pairs; generated sets are thousands, not millions.
    """
    seen: dict[str, int] = {}
    kept: list[tuple[int, frozenset[str]]] = []
    out: list[str | None] = []
    for i, text in enumerate(texts):
        key = normalise(text)
        if key in seen:
            out.append(f"exact duplicate of #{seen[key]}")
            continue
        seen[key] = i
        grams = shingles(text, size)
        near = None
        if threshold < 1.0:
            for j, other in kept:
                small, large = sorted((len(grams), len(other)))
                if large and small / large < threshold:
                    continue
                if jaccard(grams, other) >= threshold:
                    near = j
                    break
        if near is not None:
            out.append(f"near duplicate of #{near}")
            continue
        kept.append((i, grams))
        out.append(None)
    return out
