"""`kdforge eval PATH`: rebuild the student(s) of a run folder from their checkpoints and test them again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from kdforge.adapters import adapter_for
from kdforge.data import DataBundle, make_loader
from kdforge.data.recipe_data import load_data
from kdforge.engine.checkpoint import checkpoint_name, load_checkpoint
from kdforge.errors import ConfigError
from kdforge.evaluate.full import classification_entry, json_safe, lm_entry, logits_of, torch_profile, unique_stems
from kdforge.evaluate.inputs import split_batch, student_inputs
from kdforge.evaluate.lm import lm_metrics
from kdforge.evaluate.predict import predict
from kdforge.files import atomic_write_text, readable_dir, sha256_file
from kdforge.progress import status
from kdforge.recipe import Recipe, load_run_recipe, validate
from kdforge.report import row
from kdforge.strategies.provision import build, provide_teacher
from kdforge.teachers import evaluation_model


class RunStudent(NamedTuple):
    """A run's student rebuilt from its recipe and checkpoint, with the data and recipe it was trained on."""

    student: nn.Module
    bundle: DataBundle
    recipe: Recipe
    state: dict[str, Any]


def run_folders(run_dir: str | Path) -> list[Path]:
    """The folders of ``run_dir`` that hold one student each: the run folder itself, or one per variant."""
    root = Path(run_dir)
    if not (root / "recipe.yaml").is_file():
        raise ConfigError(f"{str(root)!r} is not a run folder (no recipe.yaml)")
    parent = validate(load_run_recipe(root / "recipe.yaml"), source=str(root / "recipe.yaml"))
    return [root / name for name in parent.variants] if parent.variants else [root]


def load_run_student(folder: str | Path, checkpoint: str = "last") -> RunStudent:
    """Rebuild the student of one run folder from its recipe.yaml and ``checkpoints/<checkpoint>``."""
    folder = Path(folder)
    recipe = validate(load_run_recipe(folder / "recipe.yaml"), source=str(folder / "recipe.yaml"))
    ckpt = folder / "checkpoints" / checkpoint_name(checkpoint)
    # A kill between a checkpoint swap's two renames leaves only `.NAME.old`; readers use it as it is.
    if not readable_dir(ckpt).is_dir():
        raise ConfigError(f"{str(ckpt)!r} does not exist; choose --checkpoint last or best")
    with status(f"rebuilding the student {recipe.name} from {ckpt.name}"):
        bundle = load_data(recipe)
        student = build(recipe.student, bundle, "student")
        state = load_checkpoint(ckpt, student)
    return RunStudent(student, bundle, recipe, state)


def checkpoint_fingerprint(folder: Path, checkpoint: str) -> dict[str, Any]:
    """``{step, sha256}`` of a run folder's checkpoint (its state.json, which records the weights' sha256); None's
    when it has none."""
    state = readable_dir(Path(folder) / "checkpoints" / checkpoint) / "state.json"
    if not state.is_file():
        return {"step": None, "sha256": None}
    try:
        step = json.loads(state.read_text()).get("step")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        step = None
    return {"step": step, "sha256": sha256_file(state)}


def record_is_current(record: dict[str, Any], run_dir: str | Path, checkpoint: str) -> bool:
    """Whether an evaluation record of ``run_dir`` was made from the checkpoints its folders hold now."""
    root = Path(run_dir)
    made = {
        entry["checkpoint"]["folder"]: {k: entry["checkpoint"].get(k) for k in ("step", "sha256")}
        for entry in (record.get("models") or {}).values()
        if isinstance(entry, dict) and isinstance(entry.get("checkpoint"), dict) and "folder" in entry["checkpoint"]
    }
    current = {_relative(f, root): checkpoint_fingerprint(f, checkpoint) for f in run_folders(root)}
    return all(made.get(folder) == now for folder, now in current.items())


def _relative(folder: Path, root: Path) -> str:
    return Path(folder).relative_to(root).as_posix()


PROFILE_ROWS = 256  # real test rows the speed profile cycles through
BATCH = {"classification": 256, "lm": 8}  # the default large batch timed: LMs' full logits are large


@dataclass(frozen=True)
class Target:
    """What `kdforge eval PATH` evaluates: a run's folders at one checkpoint, or an export folder."""

    kind: str  # "run", "checkpoint" or "export"
    root: Path  # the run folder (whose checkpoints are read) or the export folder
    folders: tuple[Path, ...]  # the run folders holding one student each (none for an export)
    checkpoint: str

    @property
    def json_path(self) -> Path:
        """Where the record is written: ``<EXPORT>/eval.json`` or ``<RUN>/eval-<checkpoint>.json``."""
        return self.root / ("eval.json" if self.kind == "export" else f"eval-{self.checkpoint}.json")


def _checkpoint_name(folder: Path) -> str:
    # A kill between a checkpoint swap's two renames leaves `.last.old`: it is the `last` checkpoint.
    name = folder.name
    return name[1:-4] if name.startswith(".") and name.endswith(".old") else name


def resolve_target(path: str | Path, checkpoint: str = "last") -> Target:
    """Which kind of folder ``path`` is; anything else is a ConfigError naming it and the three accepted kinds."""
    from kdforge.export.load import is_export_folder, read_record  # export imports this module: not at the top

    folder = Path(path).expanduser()
    checkpoint_name(checkpoint)  # it names the record file eval-<checkpoint>.json too
    if not folder.is_dir():
        raise ConfigError(f"{str(folder)!r} does not exist; expected a run folder, a checkpoint folder or an export")
    if is_export_folder(folder):
        return Target("export", folder, (), str(read_record(folder)["checkpoint"]))
    if (folder / "recipe.yaml").is_file():
        return Target("run", folder, tuple(run_folders(folder)), checkpoint)
    run = folder.parent.parent
    if folder.parent.name == "checkpoints" and (run / "recipe.yaml").is_file():
        return Target("checkpoint", run, (run,), _checkpoint_name(folder))
    raise ConfigError(
        f"{str(folder)!r} is not a run folder, a checkpoint folder or an export folder; expected a folder written "
        "by `kdforge run` (with recipe.yaml), one of its checkpoints (RUN/checkpoints/last or best), or a folder "
        "written by `kdforge export` (with export.json)"
    )


def _row(name: str, entry: dict[str, Any], step: Any) -> dict[str, Any]:
    """The table row of one model: kdforge.report.row's keys, the large batch's legacy column, the new figures."""
    metrics, profile = entry["metrics"], dict(entry["profile"])
    profile[f"latency_ms_b{profile['batch_size']}"] = profile["latency_ms_bN"]  # README tables read b256 / b8
    extra = {k: metrics.get(k) for k in ("top5", "macro_f1", "brier")}
    keys = ("flops_per_sample", "throughput_per_s", "batch_size", "cpu_share", "busy")
    return {**row(name, metrics, profile), **extra, **{k: profile[k] for k in keys}, "step": step}


def _lm(model: nn.Module) -> bool:
    return adapter_for(model).causal_lm


def _model_entry(
    model: nn.Module,
    name: str,
    bundle: DataBundle,
    test: Any,
    teacher: tuple[nn.Module | None, Tensor | None],
    batch_size: int | None,
    json_dir: Path,
    logits: Tensor | None = None,
    stem: str | None = None,
) -> dict[str, Any]:
    """Evaluate one PyTorch model on the test split (``logits``: its test logits, already computed) and profile it;
    ``stem``: its reliability diagram's file stem (default: from ``name``)."""
    model = model.to("cpu").eval()
    lm = _lm(model)
    size = batch_size or BATCH["lm" if lm else "classification"]
    with status(f"{name}: speed profile (batch 1 and {size})"):
        profile = torch_profile(model, student_inputs(model, split_batch(bundle, PROFILE_ROWS)), size)
    network, teacher_logits = teacher
    if lm:
        teacher_net = None if network is None else network.to("cpu").eval()
        with status(f"{name}: test metrics"):
            metrics = lm_metrics(model, test, "cpu", teacher_net, per_position=teacher_net is not None)
        return lm_entry(metrics, profile)
    with status(f"{name}: test metrics"):
        computed, labels, _ = predict(model, test, "cpu") if logits is None else (logits, _labels(test), None)
        if labels is None:
            raise ConfigError("kdforge eval: the test split carries no labels; expected a labelled split")
        classes = bundle.class_names or None
        return classification_entry(computed, labels, teacher_logits, classes, profile, name, json_dir, stem)


def _labels(test: Any) -> Tensor | None:
    labels = [torch.as_tensor(batch["label"]) for batch in test if "label" in batch]
    return torch.cat(labels) if labels else None


def _teacher(recipe: Recipe, bundle: DataBundle, test: Any) -> tuple[nn.Module | None, Tensor | None]:
    """The run's teacher network (when it has one) and, for a classifier, its test logits."""
    with status("loading the teacher"):
        teacher, _ = provide_teacher(recipe, bundle, allow_training=False, signals_needed=False)
        network = evaluation_model(teacher)
    if network is None:
        return None, None
    network = network.to("cpu").eval()
    if _lm(network):
        return network, None
    with status("the teacher's test logits"):
        return network, predict(network, test, "cpu")[0]


def _context(model: nn.Module, bundle: DataBundle) -> tuple[str, list[str] | None]:
    lm = _lm(model)
    return ("lm" if lm else "classification"), (None if lm else list(bundle.class_names) or None)


def _teacher_groups(loaded: list[RunStudent]) -> list[list[int]]:
    """Indices of the students grouped by the teacher and data they trained with (a variant may override either)."""
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(loaded):
        tree = item.recipe.model_dump(mode="json")
        key = json.dumps({"teacher": tree.get("teacher"), "data": tree.get("data")}, sort_keys=True, default=str)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _evaluate_folders(target: Target, batch_size: int | None) -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
    """Every student of the run's folders, each against its own teacher (first, when the run has one)."""
    loaded = [load_run_student(folder, target.checkpoint) for folder in target.folders]
    groups = _teacher_groups(loaded)
    # One teacher is "teacher"; several (variants overriding teacher or data) are named after the students they taught.
    teachers = [
        f"teacher ({', '.join(loaded[i].recipe.name for i in group)})" if len(groups) > 1 else "teacher"
        for group in groups
    ]
    for item in loaded:
        if item.recipe.name in teachers or item.recipe.name == "teacher":
            raise ConfigError(
                f"variant {item.recipe.name!r}: the evaluation record names the run's teacher so; rename the variant "
                "(a key of variants in the recipe)"
            )
    stems = unique_stems([*teachers, *(item.recipe.name for item in loaded)])
    models: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for group, teacher_name in zip(groups, teachers, strict=True):
        first = loaded[group[0]]  # every student of the group has the same data and teacher
        test = make_loader(first.bundle.test, first.recipe.data.eval_batch_size, shuffle=False, seed=0)
        teacher = _teacher(first.recipe, first.bundle, test)
        if teacher[0] is not None:
            entry = _model_entry(
                teacher[0], teacher_name, first.bundle, test, (None, None), batch_size, target.root, teacher[1],
                stems[teacher_name],
            )  # fmt: skip
            models[teacher_name] = {**entry, "checkpoint": None}
            rows.append(_row(teacher_name, entry, None))
        for i in group:
            item, folder, name = loaded[i], target.folders[i], loaded[i].recipe.name
            entry = _model_entry(
                item.student, name, first.bundle, test, teacher, batch_size, target.root, None, stems[name]
            )
            fingerprint = checkpoint_fingerprint(folder, target.checkpoint)
            models[name] = {**entry, "checkpoint": {"folder": _relative(folder, target.root), **fingerprint}}
            rows.append(_row(name, entry, item.state.get("step")))
    return models, rows, _context(loaded[-1].student, loaded[-1].bundle)


def _evaluate_export(folder: Path, batch_size: int | None) -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
    """The exported artifact itself on its run's test split, timed as read back (onnxruntime or PyTorch)."""
    from kdforge.export.load import load_export

    artifact = load_export(folder)
    run = Path(artifact.record["run"])
    if not (run / "recipe.yaml").is_file():
        raise ConfigError(
            f"{str(folder / 'export.json')!r} names run {str(run)!r}, which has no recipe.yaml; the export is "
            "evaluated on its run's test split, so the run folder must still exist"
        )
    recipe = validate(load_run_recipe(run / "recipe.yaml"), source=str(run / "recipe.yaml"))
    bundle = load_data(recipe)
    # An ONNX graph is the student's architecture: its FLOPs and parameters are counted on a freshly built student.
    source = artifact.model if artifact.model is not None else build(recipe.student, bundle, "student")
    if _lm(source):
        raise ConfigError(
            f"{str(folder)!r}: evaluating an exported causal LM is not supported; evaluate its run folder {str(run)!r}"
        )
    test = make_loader(bundle.test, recipe.data.eval_batch_size, shuffle=False, seed=0)
    teacher = _teacher(recipe, bundle, test)
    name = f"{recipe.name} ({artifact.record['format']})"
    stems = unique_stems(["teacher", name])
    models: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    if teacher[0] is not None:
        entry = _model_entry(
            teacher[0], "teacher", bundle, test, (None, None), batch_size, folder, teacher[1], stems["teacher"]
        )
        models["teacher"] = {**entry, "checkpoint": None}
        rows.append(_row("teacher", entry, None))
    inputs = artifact.inputs(split_batch(bundle, PROFILE_ROWS))
    size = batch_size or BATCH["classification"]
    with status(f"{name}: speed profile (batch 1 and {size})"):
        profile = torch_profile(source, inputs, size, run=artifact.run, size_bytes=artifact.size_bytes)
    with status(f"{name}: test metrics"):
        logits, labels = logits_of(lambda batch: artifact.run(artifact.inputs(batch)), test)
        classes = bundle.class_names or None
        entry = classification_entry(logits, labels, teacher[1], classes, profile, name, folder, stems[name])
    models[name] = {**entry, "checkpoint": {"folder": None, "step": artifact.record.get("step"), "sha256": None}}
    rows.append(_row(name, entry, artifact.record.get("step")))
    return models, rows, _context(source, bundle)


def evaluate_run(run_dir: str | Path, checkpoint: str = "last") -> tuple[list[dict[str, Any]], Path]:
    """Evaluate every student in ``run_dir`` (one folder, or one per variant); the rows and eval-<checkpoint>.json."""
    record, path = evaluate_path(run_dir, checkpoint)
    return record["rows"], path


def evaluate_path(
    path: str | Path, checkpoint: str = "last", batch_size: int | None = None
) -> tuple[dict[str, Any], Path]:
    """Evaluate a run folder (every student), a checkpoint folder or an export folder; write and return the record.

    A run or checkpoint folder's record is ``<RUN>/eval-<checkpoint>.json``, an export folder's ``<EXPORT>/eval.json``;
    reliability diagrams go to ``eval/`` beside it. ``batch_size`` is the large batch timed (default 256, LMs 8).
    """
    target = resolve_target(path, checkpoint)
    if target.kind == "export":
        models, rows, context = _evaluate_export(target.root, batch_size)
    else:
        models, rows, context = _evaluate_folders(target, batch_size)
    kind, class_names = context
    record = {
        "checkpoint": target.checkpoint,
        "source": str(path),
        "kind": kind,
        "class_names": class_names,
        "rows": rows,
        "models": models,
    }
    json_path = target.json_path
    # Strict JSON: a non-finite metric (a diverged model's NLL) is null, which every JSON reader accepts.
    atomic_write_text(json_path, json.dumps(json_safe(record), indent=2, default=str, allow_nan=False) + "\n")
    return record, json_path
