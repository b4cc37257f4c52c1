"""Recipe: the typed, strictly validated description of one run (YAML + key=value overrides)."""

from __future__ import annotations

import copy
import importlib.util
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from kdforge.errors import ConfigError, IntegrityError
from kdforge.files import read_sealed_text


class Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class ModelConfig(Strict):
    """A registered model builder and its hyper-parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class DataConfig(Strict):
    """A registered data set, its builder's parameters, and how to batch it."""

    name: str = "fashion_mnist"
    params: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(128, gt=0)
    eval_batch_size: int = Field(256, gt=0)
    num_workers: int = Field(0, ge=0)


class OptimizerConfig(Strict):
    """SGD or AdamW and their settings."""

    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)


class ScheduleConfig(Strict):
    """Learning-rate schedule, stepped once per optimizer step; milestones are in epochs."""

    name: Literal["constant", "step", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    milestones: list[float] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class SelectConfig(Strict):
    """Which checkpoint a run keeps: the last one, or the best by a named metric on a named split."""

    mode: Literal["best", "last"] = "last"
    metric: str = Field("accuracy", min_length=1, description="a metric the evaluation reports, e.g. accuracy, nll")
    split: str = Field("val", min_length=1, description="the split chosen on (never the test set)")
    direction: Literal["max", "min"] = "max"


class TrainConfig(Strict):
    """Budget, optimisation and bookkeeping of one training run."""

    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)
    grad_accum: int = Field(1, ge=1)
    mixed_precision: Literal["no", "auto", "bf16", "fp16"] = "no"

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `no` as False.
        return "no" if value is False else value

    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    grad_clip: float | None = Field(None, gt=0)
    eval_every: int = Field(0, ge=0, description="optimizer steps between evaluations; 0 = every epoch")
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between resumable checkpoints; 0 = at evals")
    chunk_size: int = Field(512, ge=1, description="tokens per chunk of a causal LM's token losses (memory bound)")
    select: SelectConfig = Field(default_factory=lambda: SelectConfig())

    @field_validator("select", mode="before")
    @classmethod
    def _select_shorthand(cls, value: Any) -> Any:
        # `select: best` is shorthand for {mode: best} on the default metric.
        return {"mode": value} if isinstance(value, str) else value


class TeacherConfig(Strict):
    """The teacher section; ``kind`` names a registered teacher whose own section (its ``Config``) checks the rest."""

    model_config = ConfigDict(extra="allow")
    kind: str = "live"


class NetworkTeacherConfig(TeacherConfig):
    """A teacher network (live, precomputed, or the source of a cache): a checkpoint, or trained once and cached."""

    model_config = ConfigDict(extra="forbid")
    model: ModelConfig | None = None
    checkpoint: str | None = None
    train: TrainConfig | None = None
    cache_dir: str = "~/.cache/kdforge/teachers"
    seed: int | None = Field(None, description="seed of the teacher's training; default: the recipe's seed")
    dtype: Literal["float32", "bfloat16", "float16", "int8"] = Field(
        "float32", description="the teacher's weights: a float cast, or int8 dynamic quantization (CPU, not the head)"
    )
    device: str | None = Field(None, description="run the teacher here (e.g. cuda:1); default: the student's device")


class StoreConfig(Strict):
    """Where `kdforge cache` writes the teacher's signals and how they are encoded; `teacher.kind=cached` reads it."""

    path: str
    codec: Literal["fp32", "fp16", "bf16", "topk", "topk_q8", "topk_poly"] = "fp16"
    top_k: int = Field(32, gt=0)
    temperature: float = Field(1.0, gt=0)
    shard_size: int = Field(4096, gt=0)
    batch_size: int = Field(256, gt=0)
    views: int = Field(1, ge=1, description="augmented views stored per sample; epoch e trains on view e % views")
    view_seed: int = Field(0, description="seed of the stored views' augmentation draws")
    features: list[str] = Field(default_factory=list, description="teacher module paths whose outputs are stored too")
    memory_mb: int = Field(1024, ge=0, description="a store up to this size is held in memory; a larger one streams")
    read_window: int = Field(4, ge=1, description="shards a streamed epoch reads at a time (shuffled within them)")
    feature_dtype: Literal["fp32", "fp16", "bf16"] = "fp16"


class ResponsesConfig(Strict):
    """Where a causal LM's training responses come from (the data set, the teacher, the student, or both)."""

    source: Literal["dataset", "seqkd", "on_policy", "mixed", "speculative", "contrastive"] = "dataset"
    student_fraction: float = Field(
        0.5, ge=0, le=1, description="mixed: GKD's λ, the share of batches the student writes"
    )
    prompt_tokens: int = Field(32, ge=1, description="plain text: the first tokens of each row are its prompt")
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, ge=0, description="the student's sampling temperature (0 = greedy)")
    teacher_temperature: float = Field(0.0, ge=0, description="seqkd: the teacher's (0 = greedy, as in SeqKD)")
    accept_top_k: int = Field(
        25, ge=1, description="speculative: a student token outside the teacher's top-k is replaced"
    )
    cache_dir: str = "~/.cache/kdforge/responses"


class StrategyConfig(Strict):
    """The strategy section: ``name`` picks a registered strategy whose own section (its ``Config``) checks the rest.

    ``strategy: mutual`` is shorthand for ``strategy: {name: mutual}``.
    """

    model_config = ConfigDict(extra="allow")
    name: str = "offline"

    @model_serializer(mode="wrap")
    def _plain_name(self, handler: Any) -> Any:
        # A strategy without settings is written back as its bare name, as the user wrote it.
        data = handler(self)
        return data["name"] if isinstance(data, dict) and set(data) == {"name"} else data


TRACK_BACKENDS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # backend → the module it needs


def _tracker_installed(name: str) -> str:
    # Checked when the recipe is read, so a missing package fails before any data is loaded.
    module = TRACK_BACKENDS[name]
    if importlib.util.find_spec(module) is None:
        raise PydanticCustomError(
            "tracker_missing",
            "{name} needs the {module} package; install it with: pip install 'kdforge[track]'",
            {"name": repr(name), "module": module},
        )
    return name


class TrackConfig(Strict):
    """Experiment tracking through Accelerate's trackers: TensorBoard and/or MLflow (a local file store)."""

    backends: list[Annotated[Literal["tensorboard", "mlflow"], AfterValidator(_tracker_installed)]] = Field(
        default_factory=list
    )
    dir: str | None = Field(None, description="default: <run folder>/tracking (tensorboard/, mlruns/)")
    experiment: str | None = Field(None, description="MLflow experiment; default: the recipe's name")

    @field_validator("backends")
    @classmethod
    def _once(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class Recipe(Strict):
    """One run: data, teacher, student, objectives, training; optional variants compared side by side."""

    name: str = Field("run", description="1-64 characters of A-Z a-z 0-9 . _ -, not starting with '.' or '-'")
    description: str = ""
    # Strict: `seed: 1.5` or `seed: true` is a mistake, not a seed; 32 bits is what every RNG seeded from it takes.
    seed: int = Field(0, ge=0, le=2**32 - 1, strict=True)
    strategy: SerializeAsAny[StrategyConfig] = Field(default_factory=StrategyConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: SerializeAsAny[TeacherConfig] | None = None
    student: ModelConfig
    objectives: dict[str, float | dict[str, Any]] = Field(default_factory=lambda: {"ce": 1.0})
    train: TrainConfig = Field(default_factory=TrainConfig)
    store: StoreConfig | None = None
    output_dir: str = "runs"
    profile: bool = True
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    teach: dict[str, Any] | None = Field(None, description="strategy teaching_loop: its rounds and LLM teacher")
    responses: ResponsesConfig | None = Field(None, description="causal LMs: SeqKD, on-policy, mixed, speculative")
    track: TrackConfig | None = Field(None, description="experiment tracking: TensorBoard and/or MLflow")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # A name becomes a folder name (run folders, variant sub-folders): no path separators, no hidden files.
        return check_name(value, "name")

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("track", mode="before")
    @classmethod
    def _track_shorthand(cls, value: Any) -> Any:
        # `track: mlflow` and `track: [tensorboard, mlflow]` are short for {backends: [...]}.
        if isinstance(value, str):
            return {"backends": [value]}
        return {"backends": value} if isinstance(value, list) else value

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for key in value:
            check_name(key, "variant name")
        return value


NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a safe folder name (1-64 of [A-Za-z0-9._-], not starting with . or -); for validators."""
    if NAME_PATTERN.fullmatch(value):
        return value
    shown = repr(value if len(value) <= 60 else f"{value[:57]}...")
    # A custom error keeps pydantic's "Value error, " out of the message; the value travels as context, not template.
    raise PydanticCustomError(
        "invalid_name",
        "{what} {shown} ({length} characters): expected 1-64 characters of A-Z a-z 0-9 . _ -, "
        "not starting with '.' or '-'",
        {"what": what, "shown": shown, "length": len(value)},
    )


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid keys at ``loc`` (the parent of the offending key) by walking the schema."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = field.annotation
        for candidate in getattr(current, "__args__", ()):  # Optional[Model] and friends
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                current = candidate
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_validation_error(
    err: ValidationError, source: str = "recipe", root: type[BaseModel] | None = None, prefix: tuple[str, ...] = ()
) -> str:
    """One line: every problem's key path, what was wrong, and the allowed keys or values, separated by '; '."""
    lines = []
    for item in err.errors():
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # A key that is not printable as it is (a newline, a tab) is quoted, so the message stays one line.
        path = ".".join(str(p) if str(p).isprintable() else repr(p) for p in prefix + loc) or "(root)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(root or Recipe, loc[:-1])
            msg = f"unknown key; allowed keys: {', '.join(allowed)}" if allowed else "unknown key"
        elif item["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{path}: {' '.join(str(msg).split())}")
    return f"invalid {source}: " + "; ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (['a','b','c'], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        # A ReaderError (control characters) has no `problem`; its text runs over several lines.
        reason = getattr(err, "problem", None) or str(err).split("\n")[0]
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({reason})") from None
    return key.strip().split("."), value


def set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``tree[path[0]][path[1]]... = value``, creating mappings on the way."""
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {part!r} holds a value, not a mapping")
        node = child
    node[path[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``tree`` with dotted-key overrides applied (mappings replace whole values)."""
    out = copy.deepcopy(tree)
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in items:
        set_path(out, key.split(".") if isinstance(key, str) else list(key), copy.deepcopy(value))
    return out


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML error: its line number and problem (PyYAML's own text spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    if isinstance(err, yaml.constructor.ConstructorError) and "tag" in problem:
        problem += "; expected plain YAML (tags that build Python objects are refused)"
    return where + problem


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe with the safe loader; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe file {str(p)!r} does not exist")
    return _parse_yaml(p.read_text(), p)


RUN_RECIPE_FIX = (
    "it is the record of what this run trained and cannot be trusted now; restore it from a backup, or run the "
    "recipe again as a new run"
)


def load_run_recipe(path: str | Path) -> dict[str, Any]:
    """A run folder's recipe.yaml, its seal checked: a resume, re-run or export must never build from a damaged one."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe file {str(p)!r} does not exist")
    text = read_sealed_text(p, RUN_RECIPE_FIX, what="run recipe")
    try:
        return _parse_yaml(text, p)
    except ConfigError as err:  # kdforge wrote a valid mapping here: an unsealed file that no longer is one is damaged
        raise IntegrityError(f"{err}: it is damaged; {RUN_RECIPE_FIX}") from None


def _parse_yaml(text: str, p: Path) -> dict[str, Any]:
    try:
        # The safe loader builds plain mappings, lists and scalars only: a tag such as !!python/object/apply is an
        # error here, never a call.
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe file {str(p)!r} is not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe file {str(p)!r} must hold a mapping at the top level")
    return data


def validate(tree: Mapping[str, Any], source: str = "recipe") -> Recipe:
    """Validate a raw mapping into a Recipe; schema errors become one ConfigError naming every key path."""
    try:
        recipe = Recipe.model_validate(dict(tree))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None
    if recipe.teacher is not None and type(recipe.teacher) is TeacherConfig:
        recipe = recipe.model_copy(update={"teacher": teacher_section(recipe.teacher, source)})
    if type(recipe.strategy) is StrategyConfig:
        recipe = recipe.model_copy(update={"strategy": strategy_section(recipe.strategy, source)})
    return recipe


def strategy_section(cfg: StrategyConfig, source: str = "recipe") -> StrategyConfig:
    """The strategy section validated by its strategy's own schema (its ``Config`` in STRATEGIES), when registered."""
    from kdforge.registry import STRATEGIES

    if cfg.name not in STRATEGIES:
        return cfg  # an unknown name is reported by the runner, which lists the registered strategies
    kind = getattr(STRATEGIES.get(cfg.name), "Config", StrategyConfig)
    try:
        return kind.model_validate({**(cfg.model_extra or {}), "name": cfg.name})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, root=kind, prefix=("strategy",))) from None


def teacher_section(cfg: TeacherConfig, source: str = "recipe") -> TeacherConfig:
    """The teacher section validated by its kind's own schema (looked up in TEACHERS)."""
    from kdforge.registry import TEACHERS

    try:
        kind = TEACHERS.get(cfg.kind)
    except ConfigError as err:
        raise ConfigError(f"teacher.kind: {err}") from None
    try:
        return kind.Config.model_validate(cfg.model_dump())
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, root=kind.Config, prefix=("teacher",))) from None


def dump(recipe: Recipe) -> str:
    """The resolved recipe as YAML (what a run directory records)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
