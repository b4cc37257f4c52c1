"""Run a recipe: one strategy call, or one per variant with a comparison table and report."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from accelerate.utils import broadcast_object_list

import kdforge.strategies  # noqa: F401  (fills the registry)
from kdforge.data import make_loader
from kdforge.engine.rundir import RunDir
from kdforge.engine.trainer import get_accelerator
from kdforge.errors import ConfigError
from kdforge.evaluate import model_profile
from kdforge.recipe import Recipe, apply_overrides, dump, validate
from kdforge.registry import STRATEGIES
from kdforge.report import comparison_rows, render_markdown
from kdforge.strategies.offline import test_metrics
from kdforge.teachers import evaluation_model


def resolve(tree: Mapping[str, Any], overrides: Iterable[str] = ()) -> Recipe:
    """Apply key=value overrides to a raw recipe and validate it (and every variant) before anything runs."""
    recipe = validate(apply_overrides(dict(tree), list(overrides)))
    STRATEGIES.get(recipe.strategy)
    base = recipe.model_dump(mode="json")
    for name, changes in recipe.variants.items():
        variant = validate(apply_overrides({**base, "variants": {}}, changes), source=f"variant {name!r}")
        try:
            preflight(variant)
        except ConfigError as err:
            raise ConfigError(f"variant {name!r}: {err}") from None
    preflight(recipe)
    return recipe


def preflight(recipe: Recipe) -> None:
    """Check names and parameters of objectives, models and data against the registries, without training."""
    from kdforge.data.base import dataset_params
    from kdforge.engine.distiller import parse_objectives
    from kdforge.models import model_params

    parse_objectives(recipe.objectives)
    for where, cfg in (
        ("student", recipe.student),
        ("teacher.model", recipe.teacher and recipe.teacher.model),
    ):
        if cfg is None:
            continue
        try:
            valid = model_params(cfg.name)
        except ConfigError as err:
            raise ConfigError(f"{where}.name: {err}") from None
        bad = [k for k in cfg.params if k not in valid]
        if bad:
            raise ConfigError(f"{where}.params.{bad[0]}: unknown parameter; valid: {', '.join(valid) or 'none'}")
    try:
        valid = dataset_params(recipe.data.name)
    except ConfigError as err:
        raise ConfigError(f"data.name: {err}") from None
    bad = [k for k in recipe.data.params if k not in valid]
    if bad:
        raise ConfigError(f"data.params.{bad[0]}: unknown parameter; valid: {', '.join(valid)}")


def run(recipe: Recipe, run_dir: RunDir | None = None) -> dict[str, Any]:
    """Run the recipe (each variant in its own sub-folder) and write report.md and summary.json."""
    acc = get_accelerator(recipe.train.mixed_precision, recipe.train.grad_accum)
    if run_dir is None:
        # Every process must write into the folder the main process named (timestamps can differ by a second).
        path = [str(RunDir.new(recipe.output_dir, recipe.name, main=acc.is_main_process).path)]
        broadcast_object_list(path, from_process=0)
        run_dir = RunDir(path[0], main=acc.is_main_process)
    strategy = STRATEGIES.get(recipe.strategy)
    results: dict[str, dict[str, Any]] = {}
    if not recipe.variants:
        results[recipe.name] = strategy(recipe, run_dir)
    else:
        base = recipe.model_dump(mode="json")
        for name, changes in recipe.variants.items():
            variant = validate(apply_overrides({**base, "variants": {}, "name": name}, changes))
            results[name] = strategy(variant, run_dir.child(name))
        run_dir.write_text("recipe.yaml", dump(recipe))
    rows = comparison_rows(results, _teacher_row(results))
    public = {k: _public(v) for k, v in results.items()}
    run_dir.write_text("report.md", render_markdown(recipe, rows))
    if recipe.variants:
        run_dir.write_json("summary.json", {"rows": rows, "runs": public})
    return {"run_dir": str(run_dir.path), "rows": rows, "runs": public}


def _teacher_row(results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Test metrics and profile of the shared live teacher, for the first row of the table."""
    for summary in results.values():
        model, bundle = evaluation_model(summary.get("_teacher")), summary["_bundle"]
        if model is not None and get_accelerator().is_main_process:
            test = make_loader(bundle.test, 1024, shuffle=False, seed=0)
            return {
                "name": "teacher",
                "test": test_metrics(model, test),
                "profile": model_profile(model.to("cpu"), bundle.input_shape),
            }
    return None


def _public(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if not k.startswith("_")}
