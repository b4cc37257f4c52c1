"""The kdforge command line: run, cache, recipes, objectives, eval, export, plan, diagnose and the LLM commands.

Exit codes: 0 done; 1 an OS error (disk full, permission denied) or an internal error; 2 bad input (recipe,
override, usage); 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM).
"""

from __future__ import annotations

import errno
import json
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from kdforge.errors import Interrupted, KdforgeError
from kdforge.secrets import redact
from kdforge.tables import FittedTable, fitted

# Plain tracebacks, and only with --debug: typer's pretty ones print local variables, which may hold secrets.
app = typer.Typer(
    add_completion=False, no_args_is_help=False, help="Teacher → student distillation.", pretty_exceptions_enable=False
)
# Width: COLUMNS when set, else the terminal's (rich asks stdin/stdout/stderr, so `| tee log` keeps it), else 80.
# Tables fit it by splitting their columns into groups (kdforge.tables), so a pipe never cuts a value either.
out = Console()
err = Console(stderr=True)
_options = {"debug": False}
# Usage errors (exit 2) derive from click's ClickException: vendored as typer._click by recent typer releases,
# click itself by older ones; take it from a class typer exports either way.
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="print the full traceback of an error")] = False,
) -> None:
    _options["debug"] = debug


def _table(rows: list[dict[str, Any]], title: str) -> FittedTable:
    """The comparison table of runs, laid out for the console it is printed on (column groups when too wide)."""
    from kdforge.report import columns, fmt

    cols = columns(rows)
    cells = [[fmt(k, r.get(k)) for k, _ in cols] for r in rows]
    justify = ["left" if heading == "run" else "right" for _, heading in cols]
    return fitted(title, [heading for _, heading in cols], cells, justify)


@app.command()
def run(
    recipe: Annotated[str | None, typer.Argument(help="recipe file or built-in name (default: fmnist-demo)")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key.path=value overrides")] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="continue a stopped or killed run from its folder")
    ] = None,
) -> None:
    """Run a recipe (no recipe: the default Fashion-MNIST demonstration), or continue one with --resume RUN_DIR."""
    from kdforge import progress

    # Importing PyTorch, Accelerate and the registries takes seconds on a small machine: say so before it starts.
    with progress.status("starting (loading PyTorch)"):
        from kdforge import recipes as builtin
        from kdforge.recipe import load_yaml
        from kdforge.runner import resolve
        from kdforge.runner import resume as resume_run
        from kdforge.runner import run as run_recipe

    extra = list(overrides or [])
    if resume is not None:
        if recipe is not None or extra:
            raise typer.BadParameter("--resume RUN_DIR takes no recipe or overrides: the run folder holds its recipe")
        result = resume_run(resume)
        out.print(_table(result["rows"], f"{Path(resume).name} — test set"))
        out.print(f"run folder: {result['run_dir']}", soft_wrap=True, highlight=False)
        return
    if recipe is not None and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
        extra.insert(0, recipe)
        recipe = None
    path = builtin.find(recipe or builtin.DEFAULT)
    resolved = resolve(load_yaml(path), extra)
    result = run_recipe(resolved)
    out.print(_table(result["rows"], f"{resolved.name} — test set"))
    out.print(f"run folder: {result['run_dir']}", soft_wrap=True, highlight=False)


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
    cells = [[key, json.dumps(value) if isinstance(value, (dict, list)) else str(value)] for key, value in info.items()]
    out.print(fitted(f"store {info['path']}", ["key", "value"], cells, show_header=False))


@app.command()
def recipes(as_json: Annotated[bool, typer.Option("--json", help="machine-readable list")] = False) -> None:
    """List the built-in recipes."""
    from kdforge import recipes as builtin
    from kdforge.recipe import load_yaml

    items = []
    for name, path in builtin.builtin().items():
        data = load_yaml(path)
        given = data.get("strategy", "offline")
        items.append(
            {
                "name": name,
                "strategy": given.get("name", "offline") if isinstance(given, dict) else str(given),
                "path": str(path),
                "description": " ".join(str(data.get("description", "")).split()),
            }
        )
    if as_json:
        print(json.dumps(items, indent=2))
        return
    # One row per recipe: the description's first sentence (`--json` has all of it).
    cells = [[i["name"], i["strategy"], i["description"].split(". ")[0].rstrip(".")] for i in items]
    out.print(fitted("built-in recipes", ["name", "strategy", "description"], cells))


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
    cells = []
    for item in items:
        params = ", ".join(f"{k}={v['default']}" for k, v in item["params"].items())
        needs = ", ".join(n for n, on in (("teacher", item["needs_teacher"]), ("labels", item["needs_labels"])) if on)
        cells.append([item["name"], params, needs, item["summary"]])
    out.print(fitted("objectives", ["name", "parameters", "needs", "summary"], cells))


@app.command("eval")
def evaluate(
    path: Annotated[str, typer.Argument(help="a run folder, one of its checkpoint folders, or an export folder")],
    checkpoint: Annotated[str, typer.Option(help="which checkpoint of a run folder: last or best")] = "last",
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="the large batch timed (default 256; LMs 8)")
    ] = None,
) -> None:
    """Evaluate a run's models, a checkpoint or an exported student on the test set: table, eval JSON, plots."""
    from kdforge.reporting.terminal import eval_table
    from kdforge.rerun import evaluate_path

    record, written = evaluate_path(path, checkpoint, batch_size)
    for name, model in record["models"].items():
        profile = model["profile"]
        if profile.get("busy"):
            err.print(
                f"warning: {name}: this process got {profile['cpu_share']:.0%} of a CPU while its latency was "
                "timed (other work is running on this machine); its latencies are unreliable",
                soft_wrap=True,
                highlight=False,
                markup=False,
            )
    out.print(eval_table(record, f"{path} — test set ({record['checkpoint']} checkpoint)"))
    out.print(f"written: {written}", soft_wrap=True, highlight=False, markup=False)


@app.command("report")
def report(
    run_dirs: Annotated[list[str], typer.Argument(help="one or more run folders written by `kdforge run`")],
    out_dir: Annotated[str | None, typer.Option("--out", help="output folder (default FIRST_RUN_DIR/report)")] = None,
    checkpoint: Annotated[str, typer.Option(help="which checkpoint to evaluate: last or best")] = "last",
) -> None:
    """One self-contained HTML page (and Markdown) comparing the teacher and students of one or more runs."""
    from kdforge.reporting import write_report

    files = write_report(run_dirs, out_dir, checkpoint)
    for note in files.notes:
        err.print(f"note: {note}", soft_wrap=True, highlight=False, markup=False)
    out.print(f"written: {files.html}", soft_wrap=True, highlight=False, markup=False)
    figures = f"(+ {len(files.figures)} PNG files beside it)"
    out.print(f"written: {files.markdown} {figures}", soft_wrap=True, highlight=False, markup=False)


@app.command("export")
def export(
    run_dir: Annotated[str, typer.Argument(help="a run folder written by `kdforge run`")],
    fmt: Annotated[str, typer.Option("--format", help="safetensors, hf or onnx")],
    checkpoint: Annotated[str, typer.Option(help="which checkpoint: last or best")] = "last",
    out_dir: Annotated[str | None, typer.Option("--out", help="output folder (default RUN_DIR/export/FORMAT)")] = None,
) -> None:
    """Write the student(s) of a run folder alone, check them against PyTorch on test inputs, time ONNX."""
    from kdforge.export import ParityError, export_run, summary_lines

    try:
        records = export_run(run_dir, fmt, checkpoint, out_dir)
    except ParityError as exc:  # the artifact is wrong, not the user's input: exit 1
        _fail("error", str(exc), 1)
    for record in records:
        for line in summary_lines(record):
            out.print(line, soft_wrap=True, highlight=False)


@app.command("plan")
def plan_memory(
    recipe: Annotated[str, typer.Argument(help="a causal-LM recipe file or built-in name")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.path=value overrides")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Estimate a causal-LM recipe's peak memory per process (weights, optimizer, activations, loss) before running."""
    from kdforge import recipes as builtin
    from kdforge.lm.plan import estimate
    from kdforge.recipe import load_yaml
    from kdforge.runner import resolve

    result = estimate(resolve(load_yaml(builtin.find(recipe)), list(overrides or [])))
    if as_json:
        print(result.to_json())
        return
    out.print(result.table(), soft_wrap=True, highlight=False, markup=False)


@app.command()
def diagnose(
    recipe: Annotated[
        str | None, typer.Argument(help="recipe file or built-in name (with --run: default the run's own recipe)")
    ] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key.path=value overrides, as for `run`")] = None,
    student_layers: Annotated[
        str | None, typer.Option("--student-layers", help="comma-separated module paths (default: stages + head)")
    ] = None,
    teacher_layers: Annotated[
        str | None, typer.Option("--teacher-layers", help="comma-separated module paths (default: stages + head)")
    ] = None,
    batches: Annotated[int, typer.Option("--batches", help="training batches to record")] = 8,
    out_dir: Annotated[str | None, typer.Option("--out", help="output folder (default OUTPUT_DIR/diagnose/…)")] = None,
    run_dir: Annotated[str | None, typer.Option("--run", help="a run folder: diagnose its trained student")] = None,
) -> None:
    """Teacher × student linear CKA over training batches: which layers represent alike (cka.json, cka.png)."""
    from kdforge import recipes as builtin
    from kdforge.diagnose import cka_tables
    from kdforge.diagnose import diagnose as run_diagnose
    from kdforge.errors import ConfigError
    from kdforge.recipe import load_run_recipe, load_yaml
    from kdforge.runner import resolve

    if recipe is not None and "=" in recipe:
        # ``kdforge diagnose --run RUN key=value``: the first override lands where the recipe would be.
        overrides, recipe = [recipe, *(overrides or [])], None
    if recipe is None and run_dir is None:
        raise ConfigError("diagnose: give a RECIPE, or --run RUN_DIR to use that run's recipe")
    if recipe is not None:
        tree = load_yaml(builtin.find(recipe))
    else:
        assert run_dir is not None
        if not (Path(run_dir) / "recipe.yaml").is_file():
            raise ConfigError(f"--run {run_dir!r} is not a run folder (no recipe.yaml)")
        tree = load_run_recipe(Path(run_dir) / "recipe.yaml")

    def paths(value: str | None) -> list[str] | None:
        return [p.strip() for p in value.split(",") if p.strip()] if value else None

    record = run_diagnose(
        resolve(tree, list(overrides or [])),
        student_layers=paths(student_layers),
        teacher_layers=paths(teacher_layers),
        batches=batches,
        out=out_dir,
        run_dir=run_dir,
    )
    for table in cka_tables(record):
        out.print(table)
    out.print(f"written: {Path(record['out']) / 'cka.json'} and cka.png ({record['method']})", soft_wrap=True)


@app.command()
def refine(
    corpus: Annotated[str, typer.Argument(help="a CSV/JSONL/Parquet file of documents")],
    teacher: Annotated[str, typer.Option(help="the teacher: a local transformers causal-LM folder")],
    reference: Annotated[str, typer.Option(help="the small reference LM: a local transformers causal-LM folder")],
    fraction: Annotated[float, typer.Option(help="the share of documents kept")] = 0.5,
    out_path: Annotated[str, typer.Option("--out", help="the refined corpus (JSONL of text, score)")] = "refined.jsonl",
    text_column: Annotated[str, typer.Option(help="the column holding each document")] = "text",
    mode: Annotated[str, typer.Option(help="difference (MiniPLM) or random (the control)")] = "difference",
    max_len: Annotated[int, typer.Option(help="tokens scored per document")] = 512,
    seed: Annotated[int, typer.Option(help="seed of the random control")] = 0,
) -> None:
    """MiniPLM difference sampling: keep the documents the teacher finds likelier than the reference LM does."""
    from kdforge.data.files.source import read_source
    from kdforge.errors import ConfigError
    from kdforge.lm.miniplm import refine_corpus

    column = read_source("corpus", corpus).column(text_column).to_pylist()
    if any(not isinstance(t, str) for t in column):
        row = next(i for i, t in enumerate(column) if not isinstance(t, str))
        raise ConfigError(f"corpus {corpus!r}: row {row + 1} of column {text_column!r} holds no text")
    summary = refine_corpus(column, teacher, reference, fraction, out_path, mode=mode, seed=seed, max_len=max_len)
    out.print(json.dumps(summary, indent=2), soft_wrap=True, highlight=False, markup=False)


def _job_tree(recipe: str, overrides: list[str] | None) -> tuple[dict[str, Any], str]:
    """A job recipe file with key=value overrides applied, and the name errors refer to it by."""
    from kdforge.recipe import apply_overrides, load_yaml

    return apply_overrides(load_yaml(recipe), list(overrides or [])), f"recipe {recipe!r}"


@app.command()
def annotate(
    recipe: Annotated[str, typer.Argument(help="an annotate recipe (teacher + annotate sections)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.path=value overrides")] = None,
) -> None:
    """Label unlabeled texts with an LLM or embedding teacher; writes annotations, labeled.parquet and a report."""
    from kdforge.llm.annotate import annotate as run_annotate
    from kdforge.llm.annotate import load_recipe
    from kdforge.llm.summaries import annotate_lines

    tree, source = _job_tree(recipe, overrides)
    summary = run_annotate(load_recipe(tree, source))
    for line in annotate_lines(summary):
        out.print(line, soft_wrap=True, highlight=False)


@app.command()
def teach(
    recipe: Annotated[str, typer.Argument(help="a training recipe with a teach section (strategy teaching_loop)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.path=value overrides")] = None,
) -> None:
    """Teach in a loop: train, find the student's dev errors, let the LLM teacher add targeted data, retrain."""
    from kdforge.llm.summaries import teach_lines
    from kdforge.recipe import load_yaml
    from kdforge.runner import resolve
    from kdforge.runner import run as run_recipe

    tree = load_yaml(recipe)
    given = tree.get("strategy", "teaching_loop")
    name = given.get("name") if isinstance(given, dict) else given
    if name != "teaching_loop":
        raise typer.BadParameter(f"{recipe!r} has strategy {name!r}; `kdforge teach` runs teaching_loop")
    resolved = resolve({**tree, "strategy": "teaching_loop"}, list(overrides or []))
    result = run_recipe(resolved)
    for summary in result["runs"].values():
        for line in teach_lines(summary):
            out.print(line, soft_wrap=True, highlight=False)
    out.print(f"run folder: {result['run_dir']}", soft_wrap=True, highlight=False)


@app.command()
def generate(
    recipe: Annotated[str, typer.Argument(help="a recipe with a generate section (or a rationales section)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.path=value overrides")] = None,
) -> None:
    """Synthesise labelled examples (de-duplicated, filtered by re-annotation), or rationales for a student LM."""
    from kdforge.llm import generate as synth
    from kdforge.llm import rationales
    from kdforge.llm.summaries import generate_lines

    tree, source = _job_tree(recipe, overrides)
    if "rationales" in tree:
        summary = rationales.rationales(rationales.load_recipe(tree, source))
    else:
        summary = synth.generate(synth.load_recipe(tree, source))
    for line in generate_lines(summary):
        out.print(line, soft_wrap=True, highlight=False)


@app.command()
def bench(
    suite: Annotated[str | None, typer.Argument(help="suite to run (none: only rewrite the README's tables)")] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="seeds 0 .. N-1 per cell")] = 3,
    results: Annotated[str, typer.Option("--results", help="results folder")] = "benchmarks/results",
    readme: Annotated[str, typer.Option("--readme", help="README whose results block is rewritten")] = "README.md",
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="key.path=value applied to every recipe cell (repeatable)")
    ] = None,
    cells: Annotated[
        list[str] | None, typer.Option("--cells", help="only cells named so or under that prefix (repeatable)")
    ] = None,
    work: Annotated[str | None, typer.Option("--work", help="keep each cell's run folder under this folder")] = None,
    validate_only: Annotated[
        bool, typer.Option("--validate", help="resolve every cell's recipe (data, models, objectives) and stop")
    ] = False,
    list_suites: Annotated[bool, typer.Option("--list", help="list the suites and their cells")] = False,
    no_readme: Annotated[bool, typer.Option("--no-readme", help="leave the README alone")] = False,
    summary_only: Annotated[
        bool, typer.Option("--summary-only", help="run nothing: summarise the finished cells on disk")
    ] = False,
) -> None:
    """Run a benchmark suite over seeds (finished cells are skipped), summarise it and regenerate the README tables."""
    from kdforge.bench import SUITES, get_suite, run_suite, validate_suite
    from kdforge.bench.readme import update_readme
    from kdforge.bench.results import summary_rows
    from kdforge.progress import enabled
    from kdforge.tables import fitted

    def note(message: str) -> None:
        if enabled():
            err.print(f"· {message}", soft_wrap=True, highlight=False, markup=False)

    if list_suites:
        for name, spec in SUITES.items():
            needs = f" (needs {', '.join(spec.requires)})" if spec.requires else ""
            out.print(f"{name}: {spec.description}{needs}", soft_wrap=True, highlight=False, markup=False)
            for cell in spec.cells():
                out.print(f"  {cell.name}", soft_wrap=True, highlight=False, markup=False)
        return
    if seeds < 1:
        raise typer.BadParameter(f"--seeds must be at least 1, got {seeds}")
    if suite is not None:
        seed_list = list(range(seeds))
        if validate_only:
            count = validate_suite(get_suite(suite), seed_list, list(overrides or []), cells)
            out.print(f"{suite}: {count} cell runs resolve", soft_wrap=True, highlight=False)
            return
        report = run_suite(suite, seed_list, results, overrides, cells, work, say=note, run_missing=not summary_only)
        header, rows = summary_rows(report.summary)
        # The group labels (pair, method) name a row, so every split part repeats them.
        out.print(fitted(f"{suite} — mean ± std over seeds", header, rows, keys=header.index("seeds")))
        done = "ran nothing (--summary-only)" if summary_only else f"{len(report.ran)} cell run(s) done"
        out.print(
            f"{done}, {len(report.skipped)} already finished; summary: {report.summary_path}",
            soft_wrap=True,
            highlight=False,
        )
    if not no_readme:
        changed = update_readme(readme, results)
        out.print(f"{readme}: results {'rewritten' if changed else 'unchanged'}", soft_wrap=True, highlight=False)


def _fail(label: str, message: str | None, code: int) -> NoReturn:
    """Print one line ``label: message`` on stderr (the traceback first with --debug) and exit with ``code``.

    Both are redacted: a server or a library may have echoed an API key into an exception's message.
    """
    if _options["debug"] and sys.exc_info()[0] is not None:
        sys.stderr.write(redact(traceback.format_exc()))
        sys.stderr.flush()
    line = Text(label if message is None else f"{label}:", style="bold red")
    if message is not None:
        # One line whatever the message: a library's multi-line text must not break the contract.
        line.append(" " + " ".join(redact(message).split()))
    # soft_wrap: a long message stays one line in a log instead of being wrapped at the console width.
    err.print(line, soft_wrap=True, highlight=False)
    sys.exit(code)


def _os_error(exc: OSError) -> str:
    """``'path': No space left on device (ENOSPC)``: what failed where, from the error's own fields."""
    reason = exc.strerror or str(exc)
    if exc.errno in errno.errorcode:
        reason = f"{reason} ({errno.errorcode[exc.errno]})"
    paths = [repr(str(p)) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # Raised in the main thread wherever it is, so `finally` blocks and atomic writes clean up as on Ctrl-C.
    raise Interrupted(signum, f"interrupted by {signal.Signals(signum).name}")


def main() -> None:
    """Console-script entry point: every failure is one line on stderr and an exit code that says which kind."""
    _options["debug"] = False
    try:
        previous, installed = signal.signal(signal.SIGTERM, _on_sigterm), True
    except ValueError:  # not the main thread (embedded use): leave signals alone
        previous, installed = None, False
    try:
        code = app(standalone_mode=False)
    except Interrupted as exc:
        _fail(str(exc), None, 128 + exc.signum)
    except KeyboardInterrupt:
        _fail("interrupted", None, 128 + signal.SIGINT)
    except KdforgeError as exc:
        _fail("error", str(exc), 2)
    except typer.Abort:
        _fail("aborted", "input ended", 1)
    except _USAGE_ERROR as exc:
        # One line like every other refusal (click's own block is usage, hint, blank line, error); the command's
        # --help is named instead of printed.
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        _fail("error", " ".join(exc.format_message().split()) + hint, exc.exit_code)
    except OSError as exc:
        _fail("error", _os_error(exc), 1)
    except Exception as exc:
        # Library messages (torch's load_state_dict, ...) span lines; one line keeps a log greppable.
        text = " ".join(str(exc).split())
        _fail("internal error", f"{type(exc).__name__}: {text} (run with --debug for the traceback)", 1)
    finally:
        if installed:  # None: a handler not set from Python, which is the default one
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    # Without standalone mode typer returns an exit code instead of exiting, e.g. 130 for a Ctrl-C it caught.
    if isinstance(code, int) and code:
        if code == 128 + signal.SIGINT:
            _fail("interrupted", None, code)
        sys.exit(code)


if __name__ == "__main__":
    main()
