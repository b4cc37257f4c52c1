"""Property-based checks of bad input: mutated recipes and options of every command resolve, or are refused with
exit 2 and one line on stderr that names the key (no traceback).

The commands run in process through ``kdforge.cli.main`` (a subprocess costs seconds of imports; a few at the end
check the real console script). Nothing trains, loads data or contacts a server: where a command would start work
(read a data set, build an LLM backend, train), a stub raises `Reached`, which marks the input as accepted.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path as FsPath
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from kdforge import recipes
from kdforge.errors import KdforgeError
from kdforge.recipe import load_yaml
from kdforge.runner import resolve

from conftest import run_cli

# Hypothesis caches the constants it finds in the source under .hypothesis/ even with database=None: not in the repo.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "kdforge-hypothesis"))
DEMO = load_yaml(recipes.find("fmnist-demo"))
Path = tuple[str, ...]

# Names the registries and the schema know, so that mutations also reach the checks behind a valid name.
KNOWN = [
    *("live", "precomputed", "cached", "past_self", "mlp", "cnn", "tiny_bert", "kd", "dkd", "ce", "dist"),
    *("fashion_mnist", "digits", "adamw", "sgd", "cosine", "step", "best", "last", "no", "bf16", "offline"),
    *("hidden", "widths", "params", "weight", "T", "alpha", "seed", "name", "epochs", "kind", "model"),
    *("served", "local", "embedding", "labels", "prompt", "method", "input", "path", "teach", "causal_lm", "hf"),
]
# Hypothesis leans on the first choices of a list: known names first, so that more examples get past the schema.
STRINGS = [*KNOWN, "../", "../../etc", "", " ", "x" * 300, "~", "/tmp", "a.b", "-1", "nan", "1e400", "{x}", "[a]"]

# Keys without line breaks: `format_validation_error` and objective errors print keys as they are, so a key with a
# newline splits their one-line message (a known gap, reported; preflight quotes such keys).
key_text = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=12)
keys = st.one_of(st.sampled_from(KNOWN), key_text)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(STRINGS),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=6,
)
FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same examples on every machine: CI never fails on a newly drawn one
    database=None,  # and nothing written under .hypothesis/
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
# Examples each fuzz test really ran (hypothesis may stop early when a strategy runs out of new inputs).
RAN: Counter[str] = Counter()
MIN_INPUTS = 1000  # the floor for one run of this module


def _paths(node: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every key path of the mapping ``node`` (into nested mappings, not lists)."""
    if isinstance(node, dict):
        for key, child in node.items():
            path = (*prefix, key)
            yield path
            yield from _paths(child, path)


def _parent(tree: dict[str, Any], path: Path) -> dict[str, Any]:
    node = tree
    for part in path[:-1]:
        node = node[part]
    return node


def neighbours(value: Any, small: bool = False) -> st.SearchStrategy[Any]:
    """Values close to ``value``'s type (a number for a number, a name for a name), to reach range and name checks.

    ``small``: integers stay below 5,000, for keys whose size is work (a causal LM's layer count, built on the meta
    device by `kdforge plan`: a million layers is valid, and takes an hour).
    """
    if isinstance(value, bool):
        return st.one_of(st.booleans(), st.sampled_from([0, 1, "yes", None]))
    if isinstance(value, int):
        big = st.integers(-5, 4096) if small else st.integers(-(2**70), 2**70)
        return st.one_of(st.integers(-5, 4096 if small else 10**6), big, st.floats(-10, 10), st.sampled_from(STRINGS))
    if isinstance(value, float):
        return st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 30), st.sampled_from(STRINGS))
    if isinstance(value, str):
        return st.one_of(st.sampled_from(STRINGS), st.text(max_size=20))
    if isinstance(value, list):
        return st.one_of(st.lists(st.integers(-2, 1000), max_size=3), st.lists(values, max_size=3))
    return st.dictionaries(st.sampled_from(KNOWN), values, max_size=3)


@st.composite
def edits(draw: st.DrawFn, base: dict[str, Any], small: Path = ()) -> tuple[dict[str, Any], list[str], list[str]]:
    """``base`` after 1-4 random edits (retype, set, add, drop a key) and maybe key=value overrides.

    Returns the tree, the overrides, and the dotted keys touched (what a refusal should name). Integers under the
    key path ``small`` stay small (see `neighbours`).
    """
    tree = copy.deepcopy(base)
    overrides: list[str] = []
    touched: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(tree))[::-1]  # deepest keys first (see STRINGS)
        # Weighted: most edits keep a value's type, so they get past the schema to the checks behind it.
        op = draw(st.sampled_from(["retype", "retype", "retype", "set", "add", "drop", "override", "override"]))
        if op in ("retype", "set") and paths:
            path = draw(st.sampled_from(paths))
            node = _parent(tree, path)
            bounded = bool(small) and path[: len(small)] == small
            node[path[-1]] = draw(neighbours(node[path[-1]], bounded) if op == "retype" else values)
            touched.append(".".join(map(str, path)))
        elif op == "add":
            mappings = [(), *(p for p in paths if isinstance(_parent(tree, p)[p[-1]], dict))]
            parent = draw(st.sampled_from(mappings))
            node = _parent(tree, (*parent, "")) if parent else tree
            key = draw(keys)
            node[key] = draw(values)
            touched.append(".".join(map(str, (*parent, key))))
        elif op == "drop" and paths:
            path = draw(st.sampled_from(paths))
            del _parent(tree, path)[path[-1]]
            touched.append(".".join(map(str, path)))
        else:
            dotted = draw(st.one_of(st.sampled_from([".".join(map(str, p)) for p in paths] or ["seed"]), key_text))
            raw = draw(st.one_of(values.map(json.dumps), st.text(max_size=20)))
            overrides.append(draw(st.sampled_from([f"{dotted}={raw}"] * 3 + [raw])))
            touched.append(overrides[-1])  # a refused override is named as written
            touched.append(dotted)
    return tree, overrides, touched


@st.composite
def mutated(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """The demo recipe after random edits and overrides."""
    tree, overrides, _ = draw(edits(DEMO))
    return tree, overrides


# A problem of the list `format_validation_error` writes after "invalid recipe: ": the key path, a colon, the text.
KEY_PART = re.compile(r"\S[^;]*?: \S")


def check_message(err: KdforgeError) -> None:
    """A user error is one line; a schema error lists its problems on it, each naming its key."""
    message = str(err)
    assert message.strip(), f"{type(err).__name__} with an empty message"
    assert "\n" not in message, f"not one line: {message!r}"
    assert "Traceback" not in message
    if message.startswith("invalid "):
        for part in message.split(": ", 1)[1].split("; "):
            assert KEY_PART.match(part), f"{part!r} does not name a key, in {message!r}"


@settings(FUZZ, max_examples=300)
@given(mutated())
def test_any_mutated_recipe_resolves_or_names_the_problem(case: tuple[dict[str, Any], list[str]]):
    RAN["resolve"] += 1
    tree, overrides = case
    try:
        resolve(tree, overrides)
    except KdforgeError as err:
        check_message(err)


# ----------------------------------------------------------------------------------------------------------------
# Every command, in process.


class Reached(BaseException):  # BaseException: it passes main()'s handlers of Exception
    """Raised where a command would start its work: the input was accepted."""


def _reach(*_args: Any, **_kwargs: Any) -> Any:
    raise Reached


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FsPath]:
    """A working folder with the files the commands' inputs point at; the work of every command stubbed out."""
    import typer

    import kdforge.bench.readme
    import kdforge.bench.run
    import kdforge.cli
    import kdforge.data.recipe_data
    import kdforge.diagnose
    import kdforge.llm.annotate
    import kdforge.llm.generate
    import kdforge.llm.rationales
    import kdforge.lm.miniplm
    import kdforge.lm.plan
    import kdforge.reporting
    import kdforge.rerun
    import kdforge.runner
    import kdforge.strategies.cache

    root = tmp_path_factory.mktemp("fuzz")
    rows = [{"text": f"text number {i}", "label": ["a", "b"][i % 2]} for i in range(6)]
    (root / "texts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "notes.txt").write_text("not a recipe\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    for lm in ("teacher-lm", "reference-lm"):  # folders that look like HF causal LMs: refine stops at loading one
        (root / lm).mkdir()
        (root / lm / "config.json").write_text('{"model_type": "llama"}')
    run = root / "run-ok"  # a run folder as `kdforge run` leaves it (eval/export/report/diagnose --run read it)
    (run / "checkpoints" / "last").mkdir(parents=True)
    (run / "checkpoints" / "best").mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(resolve(DEMO).model_dump(mode="json"), sort_keys=False))
    (root / "empty-dir").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # every relative path a command writes lands here
        # Typer rebuilds the click group from the signatures on every call (55 ms); built once, a call takes 25.
        mp.setattr(kdforge.cli, "app", typer.main.get_command(kdforge.cli.app))
        mp.setenv("KDFORGE_PROGRESS", "0")
        for module, name in [
            (kdforge.runner, "run"),  # run, teach
            (kdforge.strategies.cache, "load_data"),  # cache (after its store/teacher checks)
            (kdforge.diagnose, "load_data"),
            (kdforge.data.recipe_data, "load_data"),  # plan, when the vocabulary comes from the data
            (kdforge.lm.plan, "_micro_batch"),  # plan, after both architectures were read
            (kdforge.lm.miniplm, "load_causal_lm"),  # refine, after its options and folders were checked
            (kdforge.llm.annotate, "output_folder"),  # annotate, generate, rationales: before cache and backend
            (kdforge.llm.generate, "output_folder"),
            (kdforge.llm.rationales, "output_folder"),
            (kdforge.rerun, "load_data"),  # eval, export
            (kdforge.reporting, "build_document"),
            (kdforge.bench.run, "run_recipe_cell"),
            (kdforge.bench.run, "run_probe_cell"),
            (kdforge.bench.readme, "update_readme"),
        ]:
            mp.setattr(module, name, _reach)
        yield root


def cli(*args: str) -> tuple[int | None, str]:
    """``kdforge ARGS`` in this process: its exit code (None: it reached its work) and stderr."""
    from kdforge.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["kdforge", *args]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main()
        code: int | None = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Reached:
        code = None
    finally:
        sys.argv = argv
    return code, stderr.getvalue()


def names(line: str, name: str) -> bool:
    """Whether ``line`` names key or path ``name``: as given, quoted, as a path after expanduser, or by a part of its
    dotted key path as a word (``variant 'v': objectives: ...`` names ``variants.v.objectives``)."""
    if name in line or repr(name) in line:
        return True
    if "\x00" not in name and str(FsPath(name).expanduser()) in line:  # '' is '.', '~' the home folder
        return True
    parts = name.split(".")
    spans = {".".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)}
    return any(re.search(rf"(?<![\w.-]){re.escape(span)}(?![\w-])", line) for span in spans if span.strip())


def check_refused(code: int | None, stderr: str, named: list[str], args: list[str]) -> None:
    """Exit 2, one `error:` line, no traceback, and the line names one of ``named`` (keys, options, paths)."""
    shown = f"kdforge {' '.join(map(repr, args))}"
    assert code == 2, f"{shown}: exit {code}, expected 2: {stderr!r}"
    assert "Traceback" not in stderr, f"{shown}: {stderr}"
    lines = stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0][7:].strip(), f"{shown}: {stderr!r}"
    assert any(names(lines[0], n) for n in named), f"{shown}: the message names none of {named}: {lines[0]!r}"


def _write(tree: Any, name: str) -> str:
    path = FsPath(name)
    path.write_text(yaml.safe_dump(tree, sort_keys=False, allow_unicode=True))
    return str(path)


def _examples(count: str) -> None:
    RAN[count] += 1


# The recipe families each recipe command takes, and the key path whose integers stay small (see `neighbours`).
def _families() -> dict[str, list[tuple[dict[str, Any], Path]]]:
    from kdforge.bench.suites import llm, text

    image = [(load_yaml(path), ()) for name, path in recipes.builtin().items() if "cache" not in name]
    causal = [(llm.recipe(method, 0), ("student", "params", "config")) for method in llm.METHODS]
    # With its vocabulary in the config, `plan` builds the student from it instead of reading the data first.
    sized = copy.deepcopy(causal[0][0])
    sized["student"]["params"]["config"]["vocab_size"] = 49152
    teach = {
        "name": "teach-fuzz",
        "data": {
            "name": "files",
            "params": {"train": "texts.jsonl", "val": "texts.jsonl", "test": "texts.jsonl", "labels": ["a", "b"]},
        },
        "student": {"name": "text_bag"},
        "train": {"epochs": 1},
        "teach": {
            "rounds": 1,
            "per_round": 2,
            "source": "pool",
            "pool": {"path": "texts.jsonl"},
            "teacher": {"kind": "served", "base_urls": ["http://127.0.0.1:9"], "model": "m"},
            "labeling": {"labels": ["a", "b"]},
            "cache": None,
        },
    }
    return {
        "run": [*image, *((text.recipe(m, 0), ()) for m in text.METHODS), *causal],
        "cache": [(load_yaml(path), ()) for name, path in recipes.builtin().items() if "cache" in name],
        "plan": [*causal, *[(sized, ("student", "params", "config"))] * 3],
        "diagnose": [(load_yaml(recipes.find("fmnist-demo")), ())],
        "teach": [(teach, ())],
    }


FAMILIES = _families()


def _flatten(parts: list[list[str]]) -> list[str]:
    return [a for part in parts for a in part]


DIAGNOSE_OPTIONS = [
    ["--batches", "0"], ["--batches", "-3"], ["--batches", "x"], ["--batches", "2"], ["--out", "diag"],
    ["--student-layers", "nope.layer"], ["--teacher-layers", ","], ["--run", "empty-dir"],
]  # fmt: skip
COMMAND_OPTIONS = {
    "cache": st.just([]),
    "plan": st.sampled_from([[], ["--json"]]),
    "diagnose": st.lists(st.sampled_from(DIAGNOSE_OPTIONS), max_size=2).map(_flatten),
    "run": st.just([]),
    "teach": st.just([]),
}


@st.composite
def recipe_commands(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """A recipe command (run, cache, plan, diagnose, teach) on a mutated recipe of its family, with overrides."""
    command = draw(st.sampled_from(list(FAMILIES)))
    base, small = draw(st.sampled_from(FAMILIES[command]))
    tree, overrides, touched = draw(edits(base, small))
    options = draw(COMMAND_OPTIONS[command])
    named = [*touched, *(a for a in options if a.startswith("--"))]
    if command == "diagnose":
        named += ["teacher", "student"]  # diagnose's own refusals name the section it looks into
    if command in ("plan", "cache"):
        named += ["teacher", "student", "store"]  # what the command requires of a recipe: it names the section
    if command == "teach":
        named += ["strategy", "teach", "data"]
    return [command, _write(tree, f"{command}.yaml"), *overrides, *options], named


@settings(FUZZ, max_examples=450)
@given(recipe_commands())
def test_recipe_commands_accept_or_refuse_in_one_line_naming_the_key(sandbox, case):
    _examples("recipe commands")
    args, named = case
    code, stderr = cli(*args)
    if code is None:  # accepted: the same recipe resolves
        return
    check_refused(code, stderr, named, args)


# Job recipes (annotate, generate, rationales through `kdforge generate`): an LLM teacher and a labelled input.
TEACHERS = [
    {"kind": "served", "base_urls": ["http://127.0.0.1:9"], "model": "m", "concurrency": 2},
    {"kind": "embedding", "model": "minilm"},
    {"kind": "local", "path": "teacher-lm"},
]
JOBS = {
    "annotate": {
        "annotate": {
            "input": {"path": "texts.jsonl", "gold_column": "label", "limit": 4},
            "labels": {"a": "first", "b": "second"},
            "prompt": {"instruction": "Pick one of {labels}.", "template": "Text: {text}\nLabel:"},
        }
    },
    "generate": {
        "generate": {
            "labels": {"a": {"verbalizer": "first", "description": "the first"}, "b": "second"},
            "per_label": 2,
            "seeds": {"path": "texts.jsonl"},
            "filter": {"labeling": {"method": "logprobs"}},
        }
    },
    "rationales": {"rationales": {"input": {"path": "texts.jsonl"}, "labels": ["a", "b"], "per_example": 2}},
}


@st.composite
def job_commands(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """`kdforge annotate|generate` on a mutated job recipe with overrides."""
    kind = draw(st.sampled_from(list(JOBS)))
    base = {"name": f"{kind}-job", "teacher": draw(st.sampled_from(TEACHERS)), **JOBS[kind], "cache": None}
    tree, overrides, touched = draw(edits(base))
    command = "annotate" if kind == "annotate" else "generate"
    return [command, _write(tree, f"{kind}.yaml"), *overrides], [*touched, "teacher", kind]


@settings(FUZZ, max_examples=250)
@given(job_commands())
def test_job_commands_accept_or_refuse_in_one_line_naming_the_key(sandbox, case):
    _examples("job commands")
    args, named = case
    code, stderr = cli(*args)
    if code is not None:
        check_refused(code, stderr, named, args)


# Commands on folders and files: eval, export, report, cache --inspect, diagnose --run, refine, bench.
PATHS = ["run-ok", "run-ok/checkpoints/last", "empty-dir", "missing", "notes.txt", "", ".", "~", "../", "texts.jsonl"]
GOOD = {"run-ok", "run-ok/checkpoints/last"}
paths = st.one_of(st.sampled_from(PATHS), st.text(st.characters(blacklist_categories=("Cs",)), max_size=12))
corpora = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).filter(
    lambda p: p.strip() not in ("", ".", "..") and not p.startswith(("~", "/", "../"))
)
ckpt_names = st.one_of(
    st.sampled_from(["last", "best", "", "LAST", "..", "checkpoints", "step-1"]), st.text(max_size=8)
)
numbers = st.one_of(st.sampled_from(["0", "-1", "1", "8", "1e3", "x", "", "nan", "1.5"]), st.text(max_size=5))
outs = st.sampled_from(["out", "run-ok", "notes.txt", "empty-dir", "new/deeper"])


def _option(flag: str, value: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.one_of(st.just([]), value.map(lambda v: [flag, v]))


@st.composite
def folder_commands(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """A command on a folder or file with random options: the refusal names the option or the path."""
    command = draw(st.sampled_from(["eval", "export", "report", "cache", "diagnose", "refine", "bench", "bench"]))
    if command == "eval":
        parts = [[draw(paths)], draw(_option("--checkpoint", ckpt_names)), draw(_option("--batch-size", numbers))]
    elif command == "export":
        fmt = st.sampled_from(["safetensors", "onnx", "hf", "", "pt", "ONNX"])
        parts = [[draw(paths)], draw(st.one_of(fmt.map(lambda f: ["--format", f]), st.just([])))]
        parts += [draw(_option("--checkpoint", ckpt_names)), draw(_option("--out", outs))]
    elif command == "report":
        parts = [draw(st.lists(paths, max_size=3)), draw(_option("--checkpoint", ckpt_names))]
        parts += [draw(_option("--out", outs))]
    elif command == "cache":
        parts = [["--inspect", draw(paths)], draw(st.sampled_from([[], ["--json"]]))]
    elif command == "diagnose":
        parts = [["--run", draw(paths)], draw(st.lists(st.sampled_from(["seed=1", "seed=x", "train.epochs=0"])))]
        parts += [draw(_option("--batches", numbers))]
    elif command == "refine":
        folders = st.sampled_from(["teacher-lm", "reference-lm", "empty-dir", "missing", "notes.txt"])
        parts = [
            # Not a folder above this one, nor home: a folder is read as an image folder, every file under it listed.
            [draw(st.one_of(st.sampled_from(["texts.jsonl", "notes.txt", "missing.csv", "empty-dir"]), corpora))],
            ["--teacher", draw(folders)],
            ["--reference", draw(folders)],
            draw(_option("--fraction", st.sampled_from(["0", "0.5", "1", "1.5", "-0.1", "nan", "inf", "x"]))),
            draw(_option("--mode", st.sampled_from(["difference", "random", "", "best"]))),
            draw(_option("--text-column", st.sampled_from(["text", "label", "nope", ""]))),
            draw(_option("--max-len", numbers)),
            draw(_option("--seed", numbers)),
        ]
    else:
        suite = st.sampled_from(["fashion-mnist", "text", "llm", "overhead", "fashion_mnist", "", "cifar100"])
        sets = st.lists(st.one_of(st.sampled_from(["seed=1", "train.epochs=0", "data.batch_size=x", "x"]), key_text))
        cells = st.lists(st.one_of(st.sampled_from(["kd", "nope", "", "/"]), st.text(max_size=6)), max_size=2)
        parts = [
            draw(st.one_of(suite.map(lambda s: [s]), st.just([]))),
            draw(_option("--seeds", st.sampled_from(["0", "-2", "1", "x"]))),
            _flatten([["--set", s] for s in draw(sets)]),
            _flatten([["--cells", c] for c in draw(cells)]),
            draw(st.sampled_from([["--validate"], ["--validate"], ["--summary-only", "--no-readme"], []])),
        ]
    args = [command, *_flatten(parts)]
    named = [a for a in args[1:] if a.startswith("--")] + [a for a in args[1:] if not a.startswith("--")]
    named += [a.split("=", 1)[0] for a in args[1:] if "=" in a]  # an override is named by its key
    # A missing argument or option is named by its name; a wrong path by itself.
    return args, [*named, "--format", "SUITE", "path", "PATH", "run_dirs", "RUN_DIRS", "CORPUS", "run_dir", "corpus"]


@settings(FUZZ, max_examples=250)
@given(folder_commands())
def test_folder_and_option_commands_accept_or_refuse_in_one_line(sandbox, case):
    _examples("folder commands")
    args, named = case
    code, stderr = cli(*args)
    if code == 0 or code is None:
        return
    check_refused(code, stderr, named, args)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        # click's usage errors were a block (usage line, hint, blank line, error): now one line naming the option.
        (["eval", "run-ok", "--batch-size", "0"], "--batch-size"),
        (["export", "run-ok"], "--format"),
        (["run", "--bogus"], "--bogus"),
        (["bench", "--seeds", "0"], "--seeds"),
    ],
)
def test_usage_errors_are_one_line_naming_the_option(sandbox, args: list[str], key: str):
    code, stderr = cli(*args)
    check_refused(code, stderr, [key], args)


@pytest.mark.parametrize(
    "override",
    [
        # Found by the fuzzing: each was an internal error (exit 1, "run with --debug") instead of exit 2.
        "student.params.config=3",  # TypeError: argument of type 'int' is not iterable (plan's vocabulary lookup)
        "student.params.config.vocab_size=-5",  # RuntimeError: Trying to create tensor with negative dimension -5
        "student.params.config.hidden_size=0",  # ZeroDivisionError in the rotary embedding
        "student.params.config.hidden_size=1.5",  # huggingface_hub's StrictDataclassFieldValidationError
        "student.params.config.rope_theta=x",  # TypeError: unsupported operand type(s) for ** or pow()
    ],
)
def test_plan_refuses_a_broken_student_config_naming_it(sandbox, override: str):
    tree = copy.deepcopy(FAMILIES["plan"][-1][0])
    args = ["plan", _write(tree, "plan-regression.yaml"), override]
    code, stderr = cli(*args)
    if code is not None:  # None: the vocabulary comes from the data, where the stub stops it (the builder refuses)
        check_refused(code, stderr, ["student.params.config"], args)


def test_enough_inputs_were_generated(reliability):
    """The module's fuzz tests ran at least MIN_INPUTS generated inputs in all (when they all ran, in this order)."""
    expected = {"resolve", "recipe commands", "job commands", "folder commands"}
    if set(RAN) != expected:
        pytest.skip(f"only {sorted(RAN)} of the fuzz tests ran")
    total = sum(RAN.values())
    assert total >= MIN_INPUTS, f"{dict(RAN)}: {total} generated inputs, expected at least {MIN_INPUTS}"
    reliability.record(
        "fuzz",
        "mutated recipes and options of every command (hypothesis): run (image, text, causal LM), cache, plan, "
        "diagnose, teach, annotate, generate, eval, export, report, refine, bench",
        "valid: accepted; invalid: exit 2, one line naming the key; 0 tracebacks",
        trials=total,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["run", "name=../../x"], "name"),
        (["run", "seed=-1"], "seed"),
        (["run", "student.params.hidden=[1, 2"], "student.params.hidden"),  # not valid YAML
        (["eval", "missing-run", "--batch-size", "0"], "--batch-size"),  # a usage error, as the console script
        (["bench", "fashion-mnist", "--validate", "--seeds", "1", "--set", "train.epochs=0"], "train.epochs"),
    ],
)
def test_cli_refuses_bad_overrides_with_exit_2_and_no_traceback(tmp_path, args: list[str], key: str):
    extra = [f"output_dir={tmp_path / 'runs'}"] if args[0] == "run" else []
    res = run_cli(*args, *extra, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    lines = res.stderr.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("error:") and key in res.stderr
    assert not (tmp_path / "runs").exists(), "nothing is written before the recipe is valid"
    assert os.listdir(tmp_path) == [], "a refused command writes nothing"
