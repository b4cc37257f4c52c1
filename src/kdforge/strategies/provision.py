"""Build the pieces a run needs from its recipe: data, student, and a teacher (loaded or trained once, cached)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed
from torch import nn

from kdforge import progress
from kdforge.adapters import adapter_for
from kdforge.data import DataBundle, make_loader
from kdforge.data.recipe_data import load_data
from kdforge.engine.checkpoint import save_model
from kdforge.engine.distiller import Distiller
from kdforge.engine.trainer import Trainer, get_accelerator
from kdforge.errors import ConfigError, IntegrityError
from kdforge.files import atomic_replace_dir, read_json_record, readable_dir, sealed_json, sha256_file
from kdforge.models import build_model
from kdforge.recipe import ModelConfig, NetworkTeacherConfig, Recipe, TrainConfig
from kdforge.registry import TEACHERS
from kdforge.teachers import Live, Teacher
from kdforge.weights import read_weights


def pretrained_lm(cfg: ModelConfig | None) -> bool:
    """Whether a model section names a pretrained transformers causal LM (a folder or GGUF file)."""
    return (
        cfg is not None and cfg.name == "hf" and bool(cfg.params.get("path")) and cfg.params.get("task") == "causal_lm"
    )


def lm_vocab_size(cfg: ModelConfig) -> int:
    """A pretrained causal LM's vocabulary size, read from its config (folder or GGUF file) without loading it."""
    from kdforge.models.hf.gguf import gguf_location
    from kdforge.models.hf.load import OFFLINE

    path = Path(cfg.params["path"]).expanduser()
    gguf = cfg.params.get("gguf_file")
    try:
        from transformers import AutoConfig

        if gguf is not None or path.suffix == ".gguf":
            folder, name = gguf_location(path, gguf)
            config = AutoConfig.from_pretrained(str(folder), gguf_file=name, **OFFLINE)
        else:
            config = AutoConfig.from_pretrained(str(path), **OFFLINE)
    except (OSError, ValueError) as err:
        raise ConfigError(f"teacher.model.params.path {str(path)!r}: cannot read its config: {err}") from None
    vocab = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", None)
    if not isinstance(vocab, int):
        raise ConfigError(f"teacher.model.params.path {str(path)!r}: its config names no vocab_size")
    return vocab


def require_task(bundle: DataBundle, student: nn.Module, what: str) -> None:
    """Sequence data (a label per token) needs a causal-LM student; classification data any classifier."""
    labels = bundle.train.labels
    if labels is not None and labels.dim() > 1 and not adapter_for(student).causal_lm:
        raise ConfigError(
            f"data.name: {bundle.name!r} holds sequences (a next-token label per token); {what} needs a causal-LM "
            f"student (e.g. {{name: hf, params: {{task: causal_lm, config: {{model_type: llama, ...}}}}}}), got "
            f"{type(student).__name__}"
        )


def require_classification(bundle: DataBundle, what: str) -> None:
    """Refuse sequence data (one label per token) where kdforge only trains and evaluates classifiers so far."""
    labels = bundle.train.labels
    if labels is not None and labels.dim() > 1:
        raise ConfigError(
            f"data.name: {bundle.name!r} holds sequences (a label per token); {what} handles classification only "
            "so far — build a store from it with `kdforge cache` and a teacher.checkpoint, or use the Python API"
        )


def build(cfg: ModelConfig, bundle: DataBundle, where: str) -> nn.Module:
    """Build a registered model for ``bundle``; errors name the recipe key."""
    try:
        return build_model(cfg.name, bundle.num_classes, bundle.input_shape, **cfg.params)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def loaders(recipe: Recipe, bundle: DataBundle, teacher: Any = None) -> tuple[Any, dict[str, Any]]:
    """Shuffled train loader and ordered evaluation loaders (val when present, and test).

    A teacher that streams its store from disk gets a shard-local read order (``store.read_window`` shards at a time).
    """
    d = recipe.data
    # data.batch_size is the global batch: N processes each take 1/N, so one recipe optimises the same way anywhere.
    n = get_accelerator().num_processes
    if d.batch_size % n:
        raise ConfigError(f"data.batch_size={d.batch_size} must be divisible by the number of processes ({n})")
    per_process = d.batch_size // n
    streams = getattr(teacher, "streams", False) and recipe.store is not None
    # A trailing batch of 1 or 2 samples is dropped: BatchNorm cannot normalise one sample, and relation objectives
    # compare samples within a batch (RKD's angles need three); such a batch would stop a run at an epoch's end.
    tail = len(bundle.train) % per_process
    train = make_loader(
        bundle.train,
        per_process,
        shuffle=True,
        seed=recipe.seed,
        drop_last=0 < tail < 3 and len(bundle.train) > per_process,
        num_workers=d.num_workers,
        read_block=teacher.reader.manifest.shard_size if streams else None,
        read_window=recipe.store.read_window if recipe.store is not None else 4,
    )
    evals = {}
    if bundle.val is not None:
        evals["val"] = make_loader(bundle.val, d.eval_batch_size, shuffle=False, seed=recipe.seed)
    evals["test"] = make_loader(bundle.test, d.eval_batch_size, shuffle=False, seed=recipe.seed)
    return train, evals


# Restrictions of the student's data (fewer labels, fewer images) never shrink what the teacher is trained on;
# these are the values the teacher sees instead.
STUDENT_ONLY_DATA: dict[str, Any] = {"label_fraction": 1.0, "train_limit": None}


def teacher_seed(recipe: Recipe) -> int:
    """The seed the teacher is trained with (students of several seeds share one teacher)."""
    t = recipe.teacher
    seed = getattr(t, "seed", None)
    return seed if seed is not None else recipe.seed


def _teacher_key(recipe: Recipe, train_cfg: TrainConfig, data_fingerprint: str | None = None) -> str:
    t = recipe.teacher
    assert isinstance(t, NetworkTeacherConfig) and t.model is not None
    data_params = {k: v for k, v in recipe.data.params.items() if k not in STUDENT_ONLY_DATA}
    ident = {
        "model": t.model.model_dump(mode="json"),
        "data": {"name": recipe.data.name, "params": data_params, "batch_size": recipe.data.batch_size},
        "train": train_cfg.model_dump(mode="json"),
        "seed": teacher_seed(recipe),
    }
    if recipe.data.name == "files":
        # The user's files can change in place under the same path: the content decides, not the recipe text.
        ident["data_fingerprint"] = data_fingerprint
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def load_weights(model: nn.Module, path: Path, where: str) -> None:
    """Load a checkpoint file (safetensors, or a tensors-only PyTorch pickle) into ``model``; errors name ``where``."""
    if not path.is_file():
        raise ConfigError(f"{where}: checkpoint file {str(path)!r} does not exist")
    weights = read_weights(path, where)
    own = model.state_dict()
    for key, value in weights.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            # A checkpoint for another class count (or width) would end in a state_dict traceback.
            raise ConfigError(
                f"{where}: {str(path)!r} does not fit the model: {key} has shape {tuple(value.shape)} in the file "
                f"but {tuple(own[key].shape)} in the model (another number of classes or another size?)"
            )
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{where}: {str(path)!r} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def train_teacher(recipe: Recipe, allow_training: bool = True) -> tuple[nn.Module | None, dict[str, Any]]:
    """Train the recipe's teacher with CE on full labels, or reuse it from the cache folder."""
    t = recipe.teacher
    assert isinstance(t, NetworkTeacherConfig) and t.model is not None
    train_cfg = t.train or TrainConfig(epochs=2, optimizer={"name": "adamw", "lr": 2e-3})
    # One Accelerator per process: the teacher trains with the run's precision.
    train_cfg = train_cfg.model_copy(update={"mixed_precision": recipe.train.mixed_precision})
    full = {k: v for k, v in STUDENT_ONLY_DATA.items() if k in recipe.data.params}
    bundle = load_data(recipe, augment_seed=teacher_seed(recipe), **full)
    set_seed(teacher_seed(recipe))
    model = build(t.model, bundle, "teacher.model")
    cache = Path(t.cache_dir).expanduser() / f"{t.model.name}-{_teacher_key(recipe, train_cfg, bundle.fingerprint)}"
    found = readable_dir(cache)
    meta_path = found / "meta.json"
    fix = f"delete the folder {str(cache)!r} to retrain the teacher"
    if not meta_path.is_file() and (found / "model.safetensors").exists():
        # Weights without their record cannot be verified: never used, never silently retrained over.
        raise IntegrityError(f"cached teacher file {str(meta_path)!r} is missing: the cache is damaged; {fix}")
    if meta_path.is_file():
        meta = read_json_record(meta_path, fix, "cached teacher file")
        if not isinstance(meta.get("sha256"), str):
            raise IntegrityError(f"cached teacher file {str(meta_path)!r} is not a JSON mapping with a 'sha256'; {fix}")
        with progress.status(f"loading teacher {t.model.name} from the cache {str(cache)!r}"):
            weights = found / "model.safetensors"
            if not weights.is_file() or sha256_file(weights) != meta["sha256"]:
                raise IntegrityError(
                    f"cached teacher file {str(weights)!r} is missing or does not match its sha256 in meta.json; {fix}"
                )
            load_weights(model, weights, "teacher cache")
        return model.eval(), {**meta, "cache": str(cache), "reused": True}
    if not allow_training:
        return None, {"cache": str(cache), "missing": True}
    require_classification(bundle, "teacher training (no teacher.checkpoint given)")
    train_loader, evals = loaders(recipe.model_copy(update={"seed": teacher_seed(recipe)}), bundle)
    trainer = Trainer(Distiller(model, None, {"ce": 1.0}), train_cfg, run_dir=None, seed=teacher_seed(recipe))
    epochs, samples = f"{train_cfg.epochs:g} epoch(s)", f"{len(bundle.train):,} samples"
    with progress.status(f"training teacher {t.model.name} ({epochs} on {samples}; cached afterwards)"):
        result = trainer.fit(train_loader, evals)
    meta = {
        "model": t.model.model_dump(mode="json"),
        "data": recipe.data.name,
        "metrics": result.last,
        "train_wall_s": result.wall_s,
    }
    acc = get_accelerator()
    if acc.is_main_process:

        def write(tmp: Path) -> None:
            save_model(model, tmp / "model.safetensors")
            meta["sha256"] = sha256_file(tmp / "model.safetensors")
            (tmp / "meta.json").write_text(sealed_json(meta))

        atomic_replace_dir(write, cache)
    acc.wait_for_everyone()
    return model.eval(), {**meta, "cache": str(cache), "reused": False}


class Provision:
    """What teacher kinds may ask of the run being built (the ``TeacherBuild`` seam): recipe, data, a network."""

    def __init__(self, recipe: Recipe, bundle: DataBundle, signals_needed: bool = True, allow_training: bool = True):
        self.recipe, self.bundle = recipe, bundle
        self.signals_needed, self.allow_training = signals_needed, allow_training
        self.num_processes = get_accelerator().num_processes

    def network(self, allow_training: bool = True) -> tuple[nn.Module | None, dict[str, Any]]:
        """The recipe's teacher network, from ``teacher.checkpoint`` or the teacher cache (trained there if allowed)."""
        t = self.recipe.teacher
        if t is None or getattr(t, "model", None) is None:
            raise ConfigError("teacher.model: required for this teacher kind (e.g. {name: cnn})")
        if t.checkpoint:
            model = build(t.model, self.bundle, "teacher.model")
            with progress.status(f"loading teacher {t.model.name} from {t.checkpoint!r}"):
                load_weights(model, Path(t.checkpoint).expanduser(), "teacher.checkpoint")
            return model, {"checkpoint": t.checkpoint}
        if pretrained_lm(t.model) and t.train is None:
            # A pretrained causal LM is the teacher as it is: distillation never fine-tunes it first. It keeps its own
            # vocabulary; how it maps onto the student's is checked at set-up (kdforge.lm.setup).
            own = dataclasses.replace(self.bundle, num_classes=lm_vocab_size(t.model))
            with progress.status(f"loading teacher {t.model.params['path']!r}"):
                model = build(t.model, own, "teacher.model").eval()
            return model, {"pretrained": t.model.params["path"]}
        return train_teacher(self.recipe, allow_training and self.allow_training)

    def member(self, cfg: NetworkTeacherConfig) -> Provision:
        """The same run's build for one member of a multi-teacher ensemble: its own network section."""
        recipe = self.recipe.model_copy(update={"teacher": cfg})
        return Provision(recipe, self.bundle, self.signals_needed, self.allow_training)


def provide_teacher(
    recipe: Recipe, bundle: DataBundle, allow_training: bool = True, signals_needed: bool = True
) -> tuple[Teacher | None, dict[str, Any]]:
    """The teacher the recipe's ``teacher.kind`` names, built by its registered class; plus a description."""
    if recipe.teacher is None:
        return None, {}
    kind = TEACHERS.get(recipe.teacher.kind)
    return kind.from_recipe(recipe.teacher, Provision(recipe, bundle, signals_needed, allow_training))


def live_teacher(recipe: Recipe, bundle: DataBundle, allow_training: bool = True) -> tuple[Live | None, dict[str, Any]]:
    """The recipe's teacher network run live, whatever ``teacher.kind`` says (stores are built from it)."""
    if recipe.teacher is None:
        raise ConfigError("teacher: this command needs a teacher with a model")
    cfg = recipe.teacher if isinstance(recipe.teacher, NetworkTeacherConfig) else None
    if cfg is None:
        raise ConfigError(f"teacher.kind={recipe.teacher.kind!r} has no network; this command needs a teacher model")
    teacher, info = Live.from_recipe(cfg, Provision(recipe, bundle, allow_training=allow_training))
    return teacher, info  # type: ignore[return-value]
