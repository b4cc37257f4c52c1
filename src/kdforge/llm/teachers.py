"""The LLM teacher kinds ``served``, ``local`` and ``embedding``: recipe sections and backend builders.

They label or write data before training (``kdforge annotate``, ``generate``, ``teach``); a training run then learns
from what they produced through the ``annotations`` teacher kind, so a run never waits on a server per batch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from kdforge.errors import ConfigError
from kdforge.llm.served import ServedBackend, ServedConfig
from kdforge.recipe import TeacherConfig
from kdforge.registry import TEACHERS
from kdforge.teachers.base import Teacher, TeacherBuild


class LocalConfig(TeacherConfig):
    """``teacher: {kind: local, model: FOLDER|smollm2|gemma3-270m}``: a Hugging Face causal LM in process."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    gguf_file: str | None = None
    batch_size: int = Field(8, ge=1)
    max_length: int | None = Field(None, ge=8)
    dtype: Literal["float32", "bfloat16"] = "float32"


class EmbeddingConfig(TeacherConfig):
    """``teacher: {kind: embedding, model: minilm}``: a sentence-transformers model, zero-shot by label descriptions."""

    model_config = ConfigDict(extra="forbid")
    model: str = "minilm"
    prefix: str = Field("", description="put before each label description, e.g. 'This article is about '")
    temperature: float = Field(0.05, gt=0, description="softmax temperature over cosine similarities")
    batch_size: int = Field(64, ge=1)


class _LLMTeacher(Teacher):
    """Shared by the three kinds: built by the annotate/generate/teach jobs, not by a training run."""

    @classmethod
    def from_recipe(cls, cfg: TeacherConfig, build: TeacherBuild) -> tuple[Teacher | None, dict[str, Any]]:
        """A training run does not call an LLM per batch: it learns from annotations (see the message)."""
        raise ConfigError(
            f"teacher.kind={cfg.kind!r} labels data before training: run `kdforge annotate RECIPE` (or `kdforge "
            "teach`) and train with teacher: {kind: annotations, path: OUT/labeled.parquet}"
        )


@TEACHERS.register("served")
class Served(_LLMTeacher):
    """Any OpenAI-compatible server (or several)."""

    Config = ServedConfig

    @staticmethod
    def backend(cfg: ServedConfig, cache: Any) -> ServedBackend:
        """The HTTP backend."""
        return ServedBackend(cfg, cache)


@TEACHERS.register("local")
class Local(_LLMTeacher):
    """A causal LM in process: label scoring with a shared prompt KV cache, and generation."""

    Config = LocalConfig

    @staticmethod
    def backend(cfg: LocalConfig, cache: Any) -> Any:
        """The in-process backend (model aliases resolved to their converted folders)."""
        from kdforge.llm.assets import resolve_model
        from kdforge.llm.local import LocalBackend

        folder, gguf = resolve_model(cfg.model)
        return LocalBackend(
            folder, cfg.gguf_file or gguf, cache=cache, batch_size=cfg.batch_size, max_length=cfg.max_length,
            dtype=cfg.dtype,
        )  # fmt: skip


@TEACHERS.register("embedding")
class Embedding(_LLMTeacher):
    """A sentence-transformers zero-shot teacher."""

    Config = EmbeddingConfig

    @staticmethod
    def backend(cfg: EmbeddingConfig, cache: Any) -> Any:
        """The embedding backend."""
        from kdforge.llm.embedding import EmbeddingBackend

        return EmbeddingBackend(cfg.model, cache=cache, batch_size=cfg.batch_size, prefix=cfg.prefix)
