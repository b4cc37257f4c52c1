"""What every LLM-teacher job shares: its recipe header, the backend built from the teacher section, the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from kdforge.errors import ConfigError
from kdforge.recipe import TeacherConfig, check_name, format_validation_error, teacher_section

DEFAULT_CACHE = "~/.cache/kdforge/llm/requests.sqlite"


class JobRecipe(BaseModel):
    """The header of an annotate / generate recipe: a name, a seed, an LLM teacher, an output folder, a cache."""

    model_config = ConfigDict(extra="forbid")
    name: str = "job"
    description: str = ""
    seed: int = Field(0, ge=0, le=2**32 - 1, strict=True)
    teacher: SerializeAsAny[TeacherConfig]
    output_dir: str = "runs"
    cache: str | None = Field(DEFAULT_CACHE, description="SQLite request cache; null sends every request")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "name")


def validate_job(model: type[BaseModel], tree: dict[str, Any], source: str) -> Any:
    """Validate a job recipe (the teacher section by its kind's schema); errors are one line naming every key."""
    try:
        job = model.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, root=model)) from None
    return job.model_copy(update={"teacher": teacher_section(job.teacher, source)})


def open_cache(path: str | None) -> Any:
    """The request cache the recipe names (None: no cache)."""
    if path is None:
        return None
    from kdforge.llm.cache import RequestCache

    return RequestCache(Path(path).expanduser())


def build_backend(cfg: TeacherConfig, cache: Any) -> Any:
    """The backend of an LLM teacher section (kinds served, local, embedding)."""
    from kdforge.registry import TEACHERS

    kind = TEACHERS.get(cfg.kind)
    make = getattr(kind, "backend", None)
    if make is None:
        raise ConfigError(
            f"teacher.kind={cfg.kind!r} is not an LLM teacher; annotate and generate take kind served, local or "
            "embedding"
        )
    return make(cfg, cache)


def output_folder(job: JobRecipe) -> Path:
    """``output_dir/name``: one folder per job, so a re-run finds (and rewrites) its own outputs."""
    path = Path(job.output_dir).expanduser() / job.name
    path.mkdir(parents=True, exist_ok=True)
    return path
