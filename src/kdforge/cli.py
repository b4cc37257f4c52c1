"""The kdforge command line: run, recipes, objectives, eval. Bad input exits with code 2."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kdforge.errors import KdforgeError

app = typer.Typer(add_completion=False, no_args_is_help=False, help="Teacher → student distillation.")
# A pipe or CI log gets a fixed width so the table is not squeezed to 80 columns.
out = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 150)


def _table(rows: list[dict[str, Any]], title: str) -> Table:
    from kdforge.report import COLUMNS, fmt

    table = Table(title=title)
    for _, heading in COLUMNS:
        table.add_column(heading, justify="left" if heading == "run" else "right")
    for r in rows:
        table.add_row(*(fmt(k, r.get(k)) for k, _ in COLUMNS))
    return table


@app.command()
def run(
    recipe: Annotated[str | None, typer.Argument(help="recipe file or built-in name (default: fmnist-demo)")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key.path=value overrides")] = None,
) -> None:
    """Run a recipe (no recipe: the default Fashion-MNIST demonstration)."""
    from kdforge import recipes as builtin
    from kdforge.recipe import load_yaml
    from kdforge.runner import resolve
    from kdforge.runner import run as run_recipe

    extra = list(overrides or [])
    if recipe is not None and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
        extra.insert(0, recipe)
        recipe = None
    path = builtin.find(recipe or builtin.DEFAULT)
    resolved = resolve(load_yaml(path), extra)
    result = run_recipe(resolved)
    out.print(_table(result["rows"], f"{resolved.name} — test set"))
    out.print(f"run folder: {result['run_dir']}")


@app.command()
def cache(
    recipe: Annotated[str | None, typer.Argument(help="recipe with a teacher and a store section")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key.path=value overrides")] = None,
    inspect_path: Annotated[str | None, typer.Option("--inspect", help="print a store's manifest and fidelity")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Build a teacher-signal store once (resumes an interrupted build), or inspect one."""
    from kdforge.strategies.cache import build_from_recipe, inspect

    if inspect_path is not None:
        info = inspect(inspect_path)
    else:
        if recipe is None:
            raise typer.BadParameter("give a RECIPE to build, or --inspect STORE")
        from kdforge import recipes as builtin
        from kdforge.engine.trainer import get_accelerator
        from kdforge.recipe import load_yaml
        from kdforge.runner import resolve

        info = build_from_recipe(resolve(load_yaml(builtin.find(recipe)), list(overrides or [])))
        if not get_accelerator().is_main_process:
            return
    if as_json:
        print(json.dumps(info, indent=2))
        return
    table = Table(title=f"store {info['path']}", show_header=False)
    for key, value in info.items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    out.print(table)


@app.command()
def recipes(as_json: Annotated[bool, typer.Option("--json", help="machine-readable list")] = False) -> None:
    """List the built-in recipes."""
    from kdforge import recipes as builtin
    from kdforge.recipe import load_yaml

    items = []
    for name, path in builtin.builtin().items():
        data = load_yaml(path)
        items.append(
            {
                "name": name,
                "path": str(path),
                "description": " ".join(str(data.get("description", "")).split()),
            }
        )
    if as_json:
        print(json.dumps(items, indent=2))
        return
    table = Table(title="built-in recipes")
    table.add_column("name")
    table.add_column("description")
    for item in items:
        table.add_row(item["name"], item["description"])
    out.print(table)


@app.command()
def objectives(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable list")] = False,
) -> None:
    """List the registered objectives with their parameters and defaults."""
    import kdforge.objectives  # noqa: F401
    from kdforge.registry import OBJECTIVES

    items = [spec.describe() for _, spec in OBJECTIVES.items()]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    table = Table(title="objectives")
    for col in ("name", "parameters", "needs", "summary"):
        table.add_column(col)
    for item in items:
        params = ", ".join(f"{k}={v['default']}" for k, v in item["params"].items())
        needs = ", ".join(n for n, on in (("teacher", item["needs_teacher"]), ("labels", item["needs_labels"])) if on)
        table.add_row(item["name"], params, needs, item["summary"])
    out.print(table)


@app.command("eval")
def evaluate(
    run_dir: Annotated[str, typer.Argument(help="a run folder written by `kdforge run`")],
    checkpoint: Annotated[str, typer.Option(help="which checkpoint: last or best")] = "last",
) -> None:
    """Re-evaluate the student(s) of a run folder on the test set and print the table."""
    from kdforge.evaluate.rerun import evaluate_run

    rows, path = evaluate_run(run_dir, checkpoint)
    out.print(_table(rows, f"{run_dir} — test set ({checkpoint} checkpoint)"))
    out.print(f"written: {path}")


def main() -> None:
    """Console-script entry point: user errors print one clear message and exit 2."""
    try:
        app(standalone_mode=False)
    except KdforgeError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
