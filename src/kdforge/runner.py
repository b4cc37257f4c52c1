"""Run a recipe: one strategy call, or one per variant with a comparison table and report."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from accelerate.utils import broadcast_object_list

import kdforge.strategies  # noqa: F401  (fills the registry)
from kdforge import progress
from kdforge.adapters import adapter_for
from kdforge.data import make_loader
from kdforge.data.base import example_inputs
from kdforge.engine.rundir import RunDir
from kdforge.engine.trainer import get_accelerator
from kdforge.errors import ConfigError, KdforgeError
from kdforge.evaluate import model_profile, test_metrics
from kdforge.evaluate.lm import lm_metrics
from kdforge.preflight import preflight
from kdforge.recipe import Recipe, apply_overrides, dump, load_run_recipe, validate
from kdforge.registry import STRATEGIES
from kdforge.report import comparison_rows, render_markdown
from kdforge.strategies.common import SUMMARY, RunOutcome
from kdforge.teachers import evaluation_model


def resolve(tree: Mapping[str, Any], overrides: Iterable[str] = ()) -> Recipe:
    """Apply key=value overrides to a raw recipe and validate it (and every variant) before anything runs."""
    recipe = validate(apply_overrides(dict(tree), list(overrides)))
    try:
        strategy = STRATEGIES.get(recipe.strategy.name)
    except ConfigError as err:
        raise ConfigError(f"strategy: {err}") from None
    preflight(recipe)  # the base first: a mistake there is not a variant's
    getattr(strategy, "check", lambda r: None)(recipe)
    base = recipe.model_dump(mode="json")
    for name, changes in recipe.variants.items():
        variant = validate(apply_overrides({**base, "variants": {}}, changes), source=f"variant {name!r}")
        try:
            preflight(variant)
            getattr(STRATEGIES.get(variant.strategy.name), "check", lambda r: None)(variant)
        except ConfigError as err:
            raise ConfigError(f"variant {name!r}: {err}") from None
    return recipe


def run(recipe: Recipe, run_dir: RunDir | None = None, resume: bool = False) -> dict[str, Any]:
    """Run the recipe (each variant in its own sub-folder) and write report.md and summary.json."""
    acc = get_accelerator(recipe.train.mixed_precision, recipe.train.grad_accum)
    if run_dir is None:
        # Every process must write into the folder the main process named (timestamps can differ by a second).
        path = [str(RunDir.new(recipe.output_dir, recipe.name, main=acc.is_main_process).path)]
        broadcast_object_list(path, from_process=0)
        run_dir = RunDir(path[0], main=acc.is_main_process)
    if not resume:
        # Written first, so that a stopped run can always be resumed from its folder alone.
        run_dir.write_recipe(dump(recipe))
    strategy = STRATEGIES.get(recipe.strategy.name)
    results: dict[str, RunOutcome] = {}
    try:
        if not recipe.variants:
            results[recipe.name] = strategy(recipe, run_dir, resume=resume)
        else:
            base = recipe.model_dump(mode="json")
            for name, changes in recipe.variants.items():
                variant = validate(apply_overrides({**base, "variants": {}, "name": name}, changes))
                results[name] = strategy(variant, run_dir.child(name), resume=resume)
    except KdforgeError:
        if not resume:
            _remove_if_untouched(run_dir)
        raise
    rows = comparison_rows(
        _with_stages({k: v.summary for k, v in results.items()}), _teacher_row(results, recipe.profile)
    )
    public = {k: v.summary for k, v in results.items()}
    samples = {k: v.summary["samples"] for k, v in results.items() if v.summary.get("samples")}
    with progress.status(f"writing the report {str(run_dir.path / 'report.md')!r}", show=run_dir.main):
        run_dir.write_text("report.md", render_markdown(recipe, rows, samples))
        if recipe.variants:
            run_dir.write_json(SUMMARY, {"rows": rows, "runs": public})
    return {"run_dir": str(run_dir.path), "rows": rows, "runs": public}


def _with_stages(summaries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A row per stage of a multi-stage run (generations, chain links, mutual students) before the run's own row."""
    out: dict[str, dict[str, Any]] = {}
    for name, summary in summaries.items():
        for stage in summary.get("stages") or []:
            out[f"{name}/{stage['name']}"] = {"test": stage.get("test")}
        out[name] = summary
    return out


def _remove_if_untouched(run_dir: RunDir) -> None:
    """A run refused before it trained anything (bad data, a missing column) leaves no folder behind."""
    if not run_dir.main or not run_dir.path.is_dir():
        return
    written = [p for p in run_dir.path.rglob("*") if p.is_file() and p.name not in ("recipe.yaml", "labels.json")]
    if not written:
        shutil.rmtree(run_dir.path, ignore_errors=True)


def resume(path: str | Path) -> dict[str, Any]:
    """Continue a stopped or killed run from its folder: its recipe.yaml and each sub-run's last checkpoint."""
    folder = Path(path).expanduser()
    if not (folder / "recipe.yaml").is_file():
        raise ConfigError(
            f"--resume {str(folder)!r}: not a run folder (no recipe.yaml); give the folder `kdforge run` printed, "
            "or run the recipe again"
        )
    # The report is a run's last write: a run killed after its summary but before its report is finished anew
    # (the strategies keep their finished results; only the report is written).
    if (folder / SUMMARY).is_file() and (folder / "report.md").is_file():
        raise ConfigError(f"--resume {str(folder)!r}: this run already finished; it is never overwritten")
    recipe = validate(load_run_recipe(folder / "recipe.yaml"), source=f"{folder / 'recipe.yaml'}")
    return run(recipe, RunDir(folder, main=get_accelerator().is_main_process), resume=True)


def _teacher_row(results: dict[str, RunOutcome], profile: bool = True) -> dict[str, Any] | None:
    """Test metrics and (unless ``profile: false``) profile of the shared live teacher, for the table's first row."""
    for outcome in results.values():
        model, bundle = evaluation_model(outcome.teacher), outcome.bundle
        if model is not None and bundle is not None and get_accelerator().is_main_process:
            lm = adapter_for(model).causal_lm
            test = make_loader(bundle.test, 16 if lm else 1024, shuffle=False, seed=0)
            with progress.status(f"evaluating the teacher on the test set ({len(bundle.test):,} samples)"):
                metrics = lm_metrics(model, test) if lm else test_metrics(model, test)
            stats: dict[str, Any] = {}
            if profile:
                with progress.status(f"profiling the teacher (size, CPU latency at batch 1 and {8 if lm else 256})"):
                    stats = model_profile(model.to("cpu"), example_inputs(bundle.test, 256), 8 if lm else 256)
            return {"name": "teacher", "test": metrics, "profile": stats}
    return None
