"""`kdforge eval RUN_DIR`: rebuild the student(s) of a run folder from their checkpoints and test them again."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from kdforge.data import DataBundle, make_loader
from kdforge.data.base import example_inputs
from kdforge.data.recipe_data import load_data
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.engine.rundir import RunDir
from kdforge.errors import ConfigError
from kdforge.evaluate import model_profile, test_metrics
from kdforge.files import readable_dir
from kdforge.recipe import Recipe, load_yaml, validate
from kdforge.report import row
from kdforge.strategies.provision import build, provide_teacher
from kdforge.teachers import evaluation_model

PROFILE_ROWS = 256  # real test inputs the speed profile is timed on (one full batch-256 forward)


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
    parent = validate(load_yaml(root / "recipe.yaml"), source=str(root / "recipe.yaml"))
    return [root / name for name in parent.variants] if parent.variants else [root]


def load_run_student(folder: str | Path, checkpoint: str = "last") -> RunStudent:
    """Rebuild the student of one run folder from its recipe.yaml and ``checkpoints/<checkpoint>``."""
    folder = Path(folder)
    recipe = validate(load_yaml(folder / "recipe.yaml"), source=str(folder / "recipe.yaml"))
    ckpt = folder / "checkpoints" / checkpoint
    # A kill between a checkpoint swap's two renames leaves only `.NAME.old`; readers use it as it is.
    if not readable_dir(ckpt).is_dir():
        raise ConfigError(f"{str(ckpt)!r} does not exist; choose --checkpoint last or best")
    bundle = load_data(recipe)
    student = build(recipe.student, bundle, "student")
    state = load_checkpoint(ckpt, student)
    return RunStudent(student, bundle, recipe, state)


def _evaluate_one(folder: Path, checkpoint: str) -> tuple[dict[str, Any], Any]:
    student, bundle, recipe, state = load_run_student(folder, checkpoint)
    teacher, _ = provide_teacher(recipe, bundle, allow_training=False, signals_needed=False)
    test = make_loader(bundle.test, recipe.data.eval_batch_size, shuffle=False, seed=0)
    metrics = test_metrics(student.eval(), test, evaluation_model(teacher))
    result = row(recipe.name, metrics, model_profile(student, example_inputs(bundle.test, PROFILE_ROWS)))
    result["step"] = state.get("step")
    return result, (teacher, bundle, test)


def evaluate_run(run_dir: str | Path, checkpoint: str = "last") -> tuple[list[dict[str, Any]], Path]:
    """Evaluate every student in ``run_dir`` (one folder, or one per variant); writes eval.json."""
    root = Path(run_dir)
    folders = run_folders(root)
    rows: list[dict[str, Any]] = []
    context = None
    for folder in folders:
        result, context = _evaluate_one(folder, checkpoint)
        rows.append(result)
    teacher, bundle, test = context
    model = evaluation_model(teacher)
    if model is not None:
        profile = model_profile(model, example_inputs(bundle.test, PROFILE_ROWS))
        rows.insert(0, row("teacher", test_metrics(model, test), profile))
    RunDir(root).write_json(f"eval-{checkpoint}.json", {"checkpoint": checkpoint, "rows": rows})
    return rows, root / f"eval-{checkpoint}.json"
