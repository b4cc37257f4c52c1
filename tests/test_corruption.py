"""Every kind of file kdforge writes, damaged five ways, read back the way a user would: refused on one line.

Each artefact is real and built once per module (a `kdforge run` checkpoint, a teacher cache, a store from
`kdforge cache`, an export, a request cache from a real annotate job); each case damages a copy, runs the reader
(resume, eval, training from the store, re-annotating, loading the export) and checks that the error is one line,
names the damaged file, says what to do, and that no file was changed. Full disk: a small tmpfs where this machine
lets the tests mount one (ENOSPC injected at kdforge's atomic writes otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdforge import cli
from kdforge.errors import KdforgeError

DAMAGES = ("truncate-half", "truncate-0", "flip-middle", "flip-header", "delete")
# Words of the advice every refusal gives: what to delete, rebuild, export or resume.
ADVICE = ("delete", "again", "build", "retrain", "--checkpoint", "resume", "restore")
DIGITS = {"name": "digits", "params": {"val_fraction": 0.1}, "batch_size": 64}


def damage(path: Path, how: str) -> None:
    """Damage one file in place."""
    if how == "delete":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if how == "truncate-half":
        data = data[: len(data) // 2]
    elif how == "truncate-0":
        data = bytearray()
    else:
        at = len(data) // 2 if how == "flip-middle" else 1
        data[at] ^= 0x01
    path.write_bytes(bytes(data))


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def cli_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run ``kdforge ARGS`` in process as the console script does; returns (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["kdforge", *args])
    capsys.readouterr()
    try:
        cli.main()
        code: Any = 0
    except SystemExit as exit_:
        code = exit_.code
    return (0 if code is None else int(code)), capsys.readouterr().err


def one_line(err: str) -> str:
    """The single line of an error; fails on a traceback or a message over several lines."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def assert_refused(line: str, name: str) -> None:
    """The refusal names the damaged file and says what to do."""
    assert name in line, f"{name!r} not named: {line}"
    assert any(word in line for word in ADVICE), f"no advice: {line}"


def assert_unchanged(before: dict[str, str], root: Path, damaged: str, how: str) -> None:
    """No file changed or vanished (the damaged one included); new files are allowed only where listed."""
    after = tree_hashes(root)
    expected = dict(before)
    if how == "delete":
        assert damaged not in after, f"{damaged} was recreated"
    for name, digest in expected.items():
        assert after.get(name) == digest, f"{name} changed or vanished"


# --- artefacts, built once ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corruption")


def _run_recipe(work: Path, out: Path, **extra: Any) -> Path:
    tree = {
        "name": "tiny",
        "seed": 0,
        "data": DIGITS,
        "student": {"name": "mlp", "params": {"hidden": [8]}},
        "objectives": {"ce": 1.0},
        "train": {"epochs": 1, "max_steps": 6, "checkpoint_every": 3, "log_every": 1},
        "output_dir": str(out),
        "profile": False,
        **extra,
    }
    path = work / f"recipe-{out.name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="module")
def run_dir(work: Path) -> Path:
    """A finished tiny run (checkpoints last and best), as `kdforge run` leaves it."""
    from kdforge.recipe import load_yaml
    from kdforge.runner import resolve, run

    result = run(resolve(load_yaml(_run_recipe(work, work / "runs"))))
    return Path(result["run_dir"])


@pytest.fixture(scope="module")
def teacher_cache(work: Path) -> Path:
    """A trained teacher in the teacher cache (model.safetensors + meta.json)."""
    from kdforge.runner import resolve
    from kdforge.strategies.provision import train_teacher

    _, info = train_teacher(resolve(_teacher_tree(work)))
    return Path(info["cache"])


def _teacher_tree(work: Path) -> dict[str, Any]:
    return {
        "data": DIGITS,
        "teacher": {
            "kind": "cached",
            "model": {"name": "mlp", "params": {"hidden": [8]}},
            "train": {"epochs": 1},
            "cache_dir": str(work / "teachers"),
        },
        "store": {"path": str(work / "store"), "codec": "fp16", "shard_size": 512},
        "student": {"name": "mlp", "params": {"hidden": [8]}},
        "objectives": {"kd": 1.0},
        "train": {"max_steps": 2},
        "profile": False,
        "output_dir": str(work / "store-runs"),
    }


@pytest.fixture(scope="module")
def store(work: Path, teacher_cache: Path) -> tuple[Path, Path, str]:
    """A complete store built by `kdforge cache`: (store folder, recipe file, its content sha256)."""
    from kdforge.runner import resolve
    from kdforge.strategies.cache import build_from_recipe

    recipe = work / "store-recipe.yaml"
    recipe.write_text(yaml.safe_dump(_teacher_tree(work)))
    info = build_from_recipe(resolve(_teacher_tree(work)))
    return Path(info["path"]), recipe, info["content_sha256"]


@pytest.fixture(scope="module")
def export_dirs(run_dir: Path) -> dict[str, Path]:
    """The run exported as safetensors and as ONNX."""
    from kdforge.export.run import export_run

    return {fmt: Path(export_run(run_dir, fmt)[0]["record"]).parent for fmt in ("safetensors", "onnx")}


# --- checkpoints ---------------------------------------------------------------------------------------------------

CHECKPOINT_FILES = ("model.safetensors", "modules.safetensors", "optimizer.safetensors", "rng.safetensors")
CHECKPOINT_FILES += ("state.json",)


def _resumable(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run that `kdforge run --resume` takes: its summary removed, as a run killed at its end."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "summary.json").unlink()
    return copy


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_damaged_checkpoint_file_is_refused_by_resume(run_dir, tmp_path, monkeypatch, capsys, name, how):
    copy = _resumable(run_dir, tmp_path)
    target = copy / "checkpoints" / "last" / name
    damage(target, how)
    before = tree_hashes(copy)
    code, err = cli_main(monkeypatch, capsys, "run", "--resume", str(copy))
    assert code == 2, err
    assert_refused(one_line(err), name if name != "state.json" or how != "delete" else "state.json")
    assert_unchanged(before, copy, f"checkpoints/last/{name}", how)
    assert not (copy / "summary.json").exists(), "no result from a damaged checkpoint"


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", ("model.safetensors", "state.json"))
def test_damaged_checkpoint_file_is_refused_by_eval(run_dir, tmp_path, monkeypatch, capsys, name, how):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    damage(copy / "checkpoints" / "best" / name, how)
    before = tree_hashes(copy)
    code, err = cli_main(monkeypatch, capsys, "eval", str(copy), "--checkpoint", "best")
    assert code == 2, err
    assert_refused(one_line(err), name)
    assert_unchanged(before, copy, f"checkpoints/best/{name}", how)
    assert not (copy / "eval-best.json").exists()


def test_checkpoint_matrix_recorded(reliability):
    for name in CHECKPOINT_FILES:
        reliability.record(
            "corruption",
            f"checkpoint {name}: truncate ×2, flip ×2, delete; read by `kdforge run --resume`"
            + (" and `kdforge eval`" if name in ("model.safetensors", "state.json") else ""),
            "refused: exit 2, one line naming the file and what to do; nothing overwritten, no result",
            trials=5 * (2 if name in ("model.safetensors", "state.json") else 1),
        )


# --- a run's recipe.yaml (what resume, re-run and export build from) ---------------------------------------------


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_run_recipe_is_refused_by_resume(run_dir, tmp_path, monkeypatch, capsys, how, reliability):
    copy = _resumable(run_dir, tmp_path)
    damage(copy / "recipe.yaml", how)
    before = tree_hashes(copy)
    code, err = cli_main(monkeypatch, capsys, "run", "--resume", str(copy))
    assert code == 2, err
    assert_refused(one_line(err), "recipe.yaml")
    assert_unchanged(before, copy, "recipe.yaml", how)
    assert not (copy / "summary.json").exists(), "nothing resumed from a damaged recipe"
    if how == "delete":
        reliability.record(
            "corruption",
            "run recipe.yaml: truncate ×2, flip ×2, delete; read by `kdforge run --resume`",
            "refused: exit 2, one line naming the file and what to do; nothing written",
            trials=len(DAMAGES),
        )


def test_an_edited_copy_of_a_run_recipe_still_runs_as_a_new_recipe(run_dir, tmp_path) -> None:
    # The seal is a YAML comment: copying a run's recipe.yaml, editing it and running it is a new run, not damage.
    from kdforge.recipe import load_run_recipe, load_yaml

    text = (run_dir / "recipe.yaml").read_text()
    assert text.startswith("# sha256_self: ")
    edited = tmp_path / "edited.yaml"
    edited.write_text(text.replace("max_steps: 6", "max_steps: 5"))
    assert load_yaml(edited)["train"]["max_steps"] == 5
    with pytest.raises(KdforgeError, match=r"edited\.yaml' is damaged"):
        load_run_recipe(edited)


@pytest.mark.parametrize("reader", ("resume", "report"))
def test_a_damaged_metrics_line_is_refused(run_dir, tmp_path, monkeypatch, capsys, reader, reliability):
    # A changed digit in a logged loss: still valid JSON, only the line's own seal can tell.
    copy = _resumable(run_dir, tmp_path)
    path = copy / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    at = lines[1].index('"loss": ') + len('"loss": ') + 2
    lines[1] = lines[1][:at] + str((int(lines[1][at]) + 1) % 10) + lines[1][at + 1 :]
    path.write_text("".join(lines))
    before = tree_hashes(copy)
    args = ("run", "--resume", str(copy)) if reader == "resume" else ("report", str(copy), "--out", str(tmp_path / "r"))
    code, err = cli_main(monkeypatch, capsys, *args)
    assert code == 2, err
    line = one_line(err)
    assert_refused(line, "metrics.jsonl")
    assert "line 2" in line, line
    assert_unchanged(before, copy, "metrics.jsonl", "flip")
    if reader == "report":
        reliability.record(
            "corruption",
            "metrics.jsonl: a digit changed inside a logged value; read by `kdforge run --resume` and `kdforge report`",
            "refused: exit 2, one line naming the file and the line; nothing written",
            trials=2,
        )


def test_a_line_torn_by_a_kill_is_dropped_before_the_next_append(tmp_path) -> None:
    from kdforge.engine.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.log({"split": "train", "step": 1, "loss": 1.5})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "step": 2, "lo')  # a kill mid-append
    again = RunDir(tmp_path / "run")
    assert again.read_metrics() == [{"split": "train", "step": 1, "loss": 1.5}]
    again.log({"split": "train", "step": 2, "loss": 1.25})
    assert [r["step"] for r in again.read_metrics()] == [1, 2]


# --- Parquet files a later command reads: annotate's labeled rows, generate's data set -----------------------------

LABELS2 = ["earn", "acq"]


@pytest.fixture(scope="module")
def parquet_job(work: Path) -> dict[str, Path]:
    """A labeled.parquet as `kdforge annotate` writes it, the same texts as a JSONL file, and a test file."""
    import pyarrow as pa

    from kdforge.sealed_parquet import write_sealed_table
    from kdforge.teachers.annotations import LABELS_KEY

    words = ["profit rose", "net income up", "agreed to buy", "acquired its rival"]
    rows = [{"text": f"{words[i % 4]} in quarter {i}", "label": LABELS2[(i % 4) // 2]} for i in range(24)]
    labeled = [{**r, "probs": [0.9, 0.1] if r["label"] == "earn" else [0.2, 0.8], "confidence": 0.9} for r in rows]
    folder = work / "parquet-job"
    folder.mkdir()
    meta = {LABELS_KEY: json.dumps(LABELS2).encode()}
    write_sealed_table(folder / "labeled.parquet", pa.Table.from_pylist(labeled).replace_schema_metadata(meta))
    write_sealed_table(folder / "dataset.parquet", pa.Table.from_pylist(rows))
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    return {"folder": folder}


def _parquet_recipe(tmp: Path, job: Path, train: Path, teacher: Path | None) -> Path:
    tree: dict[str, Any] = {
        "name": "on-parquet",
        "data": {
            "name": "files",
            "params": {"train": str(train), "test": str(job / "test.jsonl"), "labels": LABELS2, "tokenizer": "minilm",
                       "max_len": 16},
            "batch_size": 8,
        },
        "student": {"name": "text_bag"},
        "objectives": {"kd": 1.0} if teacher is not None else {"ce": 1.0},
        "train": {"max_steps": 2},
        "output_dir": str(tmp / "runs"),
        "profile": False,
    }  # fmt: skip
    if teacher is not None:
        tree["teacher"] = {"kind": "annotations", "path": str(teacher)}
    path = tmp / "on-parquet.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize("how", (*DAMAGES, "flip-value"))
@pytest.mark.parametrize("name", ("labeled.parquet", "dataset.parquet"))
def test_damaged_parquet_output_is_refused_by_training(parquet_job, tmp_path, monkeypatch, capsys, name, how):
    job = parquet_job["folder"]
    copy = tmp_path / name
    shutil.copy(job / name, copy)
    if how == "flip-value":
        # A byte inside a stored text: Parquet itself reads the file fine, only the seal can tell.
        data = bytearray(copy.read_bytes())
        data[data.index(b"acquired its rival")] ^= 0x01
        copy.write_bytes(bytes(data))
    else:
        damage(copy, how)
    before = tree_hashes(tmp_path)
    if name == "labeled.parquet":
        recipe = _parquet_recipe(tmp_path, job, job / "train.jsonl", copy)
    else:
        recipe = _parquet_recipe(tmp_path, job, copy, None)
    code, err = cli_main(monkeypatch, capsys, "run", str(recipe))
    assert code == 2, err
    line = one_line(err)
    assert name in line, line
    if name == "labeled.parquet" or how == "flip-value":
        assert_refused(line, name)  # kdforge's own output: damaged, and how to write it again
    assert_unchanged(before, tmp_path, name, how)
    assert not list((tmp_path / "runs").rglob("summary.json")), "nothing trained on a damaged file"


def test_undamaged_parquet_outputs_train(parquet_job, tmp_path, monkeypatch, capsys, reliability):
    job = parquet_job["folder"]
    for teacher in (job / "labeled.parquet", None):
        (tmp_path / str(teacher is None)).mkdir()
        train = job / ("train.jsonl" if teacher is not None else "dataset.parquet")
        code, err = cli_main(monkeypatch, capsys, "run", str(_parquet_recipe(tmp_path / str(teacher is None), job,
                                                                             train, teacher)))  # fmt: skip
        assert code == 0, err
    for name, reader in (("labeled.parquet", "an annotations teacher"), ("dataset.parquet", "data.params.train")):
        reliability.record(
            "corruption",
            f"{name}: truncate ×2, flip ×3 (middle, header, a stored text), delete; read by {reader} in `kdforge run`",
            "refused: exit 2, one line naming the file (kdforge's sealed output: 'damaged', write it again)",
            trials=len(DAMAGES) + 1,
        )


# --- teacher cache -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", ("model.safetensors", "meta.json"))
def test_damaged_teacher_cache_is_refused(work, teacher_cache, tmp_path, name, how, reliability):
    from kdforge.runner import resolve
    from kdforge.strategies.provision import train_teacher

    tree = _teacher_tree(work)
    tree["teacher"]["cache_dir"] = str(tmp_path)
    copy = tmp_path / teacher_cache.name
    shutil.copytree(teacher_cache, copy)
    damage(copy / name, how)
    before = tree_hashes(tmp_path)
    with pytest.raises(KdforgeError) as err:
        train_teacher(resolve(tree))  # training is allowed: a damaged cache must still never be trained over
    assert_refused(one_line(str(err.value)), name)
    assert_unchanged(before, tmp_path, f"{copy.name}/{name}", how)
    if name == "meta.json" and how == "flip-header":
        reliability.record(
            "corruption",
            "teacher cache model.safetensors and meta.json: truncate ×2, flip ×2, delete",
            "refused: one line naming the file, 'delete the folder to retrain'; never retrained over",
            trials=10,
        )


# --- store ---------------------------------------------------------------------------------------------------------

STORE_FILES = ("shards/shard-00000.safetensors", "ids.safetensors", "manifest.json")


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", STORE_FILES)
def test_damaged_store_is_refused_by_training(store, work, tmp_path, monkeypatch, capsys, name, how):
    root, recipe, _ = store
    copy = tmp_path / "store"
    shutil.copytree(root, copy)
    damage(copy / name, how)
    before = tree_hashes(copy)
    out = tmp_path / "runs"
    code, err = cli_main(monkeypatch, capsys, "run", str(recipe), f"store.path={copy}", f"output_dir={out}")
    assert code == 2, err
    assert_refused(one_line(err), Path(name).name)
    assert_unchanged(before, copy, name, how)
    assert not list(out.rglob("summary.json")), "no result trained from a damaged store"


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_shard_record_is_rebuilt_by_cache(store, tmp_path, monkeypatch, capsys, how):
    root, recipe, content = store
    copy = tmp_path / "store"
    shutil.copytree(root, copy)
    damage(copy / "shards" / "shard-00000.safetensors.json", how)
    code, err = cli_main(monkeypatch, capsys, "cache", str(recipe), f"store.path={copy}", "--json")
    assert code == 0, err
    if how != "delete":  # a missing record is what a kill between shard and record leaves: rebuilt quietly
        assert "shard-00000.safetensors.json" in err and "rebuilt" in err
    # The shard's record never feeds the manifest damaged: the rebuilt store is the same store.
    assert json.loads((copy / "manifest.json").read_text())["content_sha256"] == content
    assert tree_hashes(copy) == tree_hashes(root)


@pytest.mark.parametrize("name", ("shards/shard-00000.safetensors", "ids.safetensors"))
def test_cache_rebuilds_a_damaged_store_file(store, tmp_path, monkeypatch, capsys, name, reliability):
    root, recipe, _ = store
    copy = tmp_path / "store"
    shutil.copytree(root, copy)
    damage(copy / name, "flip-middle")
    code, err = cli_main(monkeypatch, capsys, "cache", str(recipe), f"store.path={copy}", "--json")
    assert code == 0, err
    assert tree_hashes(copy) == tree_hashes(root), "`kdforge cache` (the advice) restores the very store"
    if name == "ids.safetensors":
        for kind in (*STORE_FILES, "shards/shard-00000.safetensors.json"):
            reliability.record(
                "corruption",
                f"store {kind}: truncate ×2, flip ×2, delete; read by training from the store"
                if not kind.endswith(".json") or kind == "manifest.json"
                else f"store {kind} (shard record): truncate ×2, flip ×2, delete; read by `kdforge cache`",
                "refused: exit 2, one line naming the file, 'run `kdforge cache` again'; that rebuilds it"
                if not kind.endswith(".safetensors.json")
                else "warned and rebuilt; the store's content sha256 unchanged",
                trials=5,
            )


# --- exports -------------------------------------------------------------------------------------------------------

EXPORT_FILES = (("safetensors", "model.safetensors"), ("safetensors", "model.json"), ("onnx", "model.onnx"))
EXPORT_FILES += (("safetensors", "export.json"), ("onnx", "export.json"))
EXPORT_FILES += (("hf", "model.safetensors"), ("hf", "config.json"), ("hf", "generation_config.json"))
EXPORT_FILES += (("hf", "export.json"),)


@pytest.fixture(scope="module")
def hf_export(work: Path) -> Path:
    """A causal-LM run (a one-layer Llama student, one step) exported in the Hugging Face format."""
    from kdforge.export.run import export_run
    from kdforge.runner import resolve, run
    from lm_models import LM_STUDENT

    tree = {
        "name": "lm",
        "data": {
            "name": "austen_lm",
            "batch_size": 4,
            # ~5 validation blocks: evaluating the default 5% (1,400 blocks × 49k-token vocabulary) took ~40 s
            "params": {"max_len": 32, "train_limit": 8, "test_limit": 4, "val_fraction": 0.0002},
        },
        "student": LM_STUDENT,
        "objectives": {"ce": 1.0},
        "train": {"max_steps": 1},
        "output_dir": str(work / "lm-runs"),
        "profile": False,
    }
    result = run(resolve(tree))
    return Path(export_run(result["run_dir"], "hf")[0]["record"]).parent


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize(("fmt", "name"), EXPORT_FILES)
def test_damaged_export_is_refused_by_eval(request, tmp_path, monkeypatch, capsys, fmt, name, how):
    copy = tmp_path / "export"
    source = request.getfixturevalue("hf_export") if fmt == "hf" else request.getfixturevalue("export_dirs")[fmt]
    shutil.copytree(source, copy)
    damage(copy / name, how)
    before = tree_hashes(copy)
    code, err = cli_main(monkeypatch, capsys, "eval", str(copy))
    assert code == 2, err
    assert_refused(one_line(err), name)
    assert_unchanged(before, copy, name, how)
    assert not (copy / "eval.json").exists()


def test_export_matrix_recorded(reliability):
    for fmt, name in EXPORT_FILES:
        reliability.record(
            "corruption",
            f"export ({fmt}) {name}: truncate ×2, flip ×2, delete; read by `kdforge eval EXPORT`",
            "refused: exit 2, one line naming the file, 'export the run again'; nothing written",
            trials=5,
        )


# --- the request cache of LLM annotation (SQLite) ------------------------------------------------------------------


def _annotate_recipe(work: Path, server: Any, cache: Path, rows: int, name: str = "job") -> Path:
    data = work / f"texts-{rows}.jsonl"
    texts = ["Profit rose to 12 mln dlrs.", "It agreed to acquire its rival.", "Oil prices climbed.", "Wheat rose."]
    data.write_text("".join(json.dumps({"text": f"{texts[i % 4]} (item {i})"}) + "\n" for i in range(rows)))
    tree = {
        "name": name,
        "teacher": {"kind": "served", "base_urls": [server.url], "model": server.model, "concurrency": 1},
        "annotate": {
            "input": {"path": str(data)},
            "labels": {"earn": "earnings", "acq": "acquisition", "crude": "oil", "grain": "grain"},
            "method": "answer",
            "max_tokens": 3,
        },
        "output_dir": str(work / "annotations"),
        "cache": str(cache),
    }
    path = work / f"annotate-{name}-{rows}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="module")
def request_cache(work: Path, request: pytest.FixtureRequest) -> tuple[Path, Any, dict[str, Any]]:
    """A request cache written by a real annotate job against llama.cpp's server: (file, server, summary)."""
    from kdforge.llm.annotate import annotate, load_recipe

    server = request.getfixturevalue("llama_server")
    cache = work / "requests.sqlite"
    recipe = _annotate_recipe(work, server, cache, 4)
    summary = annotate(load_recipe(yaml.safe_load(recipe.read_text())), show=False)
    return cache, server, summary


def _value_offset(path: Path) -> int:
    """Where the first stored answer's bytes are in the SQLite file: a flip there must be caught by the rows' sha256."""
    with contextlib.closing(sqlite3.connect(path)) as con:
        value = con.execute("SELECT value FROM answers LIMIT 1").fetchone()[0]
    return path.read_bytes().index(value.encode()) + len(value) // 2


@pytest.mark.parametrize("how", (*DAMAGES, "flip-answer"))
def test_damaged_request_cache_is_refused_by_annotate(request_cache, work, tmp_path, monkeypatch, capsys, how):
    cache, server, summary = request_cache
    copy = tmp_path / "requests.sqlite"
    shutil.copy(cache, copy)
    if how == "flip-answer":
        data = bytearray(copy.read_bytes())
        data[_value_offset(copy)] ^= 0x01
        copy.write_bytes(bytes(data))
    else:
        damage(copy, how)
    before = copy.read_bytes() if copy.exists() else None
    sent = server.requests("/v1/chat/completions")
    recipe = _annotate_recipe(tmp_path, server, copy, 4)
    code, err = cli_main(monkeypatch, capsys, "annotate", str(recipe))
    if how == "delete":
        # A deleted cache is a cache miss: every request is sent again, and the answers are the same.
        assert code == 0, err
        assert server.requests("/v1/chat/completions") - sent == summary["rows"]
        return
    if code == 0:
        # SQLite found nothing to refuse: the damage hit a byte no answer is read from, and nothing changed.
        assert server.requests("/v1/chat/completions") == sent, "answers re-sent over a damaged cache"
        again = json.loads((tmp_path / "annotations" / "job" / "summary.json").read_text())
        assert again["predicted"] == summary["predicted"] and again["usage"]["cached"] == summary["rows"]
        assert how == "flip-middle", f"{how} went unnoticed"
    else:
        assert code == 2, err
        assert_refused(one_line(err), copy.name)
        assert not (tmp_path / "annotations" / "job" / "summary.json").exists()
    assert copy.read_bytes() == before, "the damaged cache was written to"


def test_request_cache_matrix_recorded(reliability):
    reliability.record(
        "corruption",
        "LLM request cache (SQLite): truncate ×2, flip a header byte, flip a stored answer; re-run `kdforge annotate`",
        "refused: exit 2, one line naming the file, 'delete it to start a new cache'; the file is not written",
        trials=4,
    )
    reliability.record(
        "corruption",
        "LLM request cache deleted; re-run `kdforge annotate`",
        "a cache miss: every request sent again, same labels",
        trials=1,
    )


# --- full disk -----------------------------------------------------------------------------------------------------


class SmallDisk:
    """A small tmpfs (or, where mounting is refused, ENOSPC raised by kdforge's atomic writes) that fills on demand."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root, self.monkeypatch, self.mounted = root, monkeypatch, False
        root.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(root)], capture_output=True)
        self.mounted = done.returncode == 0
        self.filler = root / "filler"

    @property
    def method(self) -> str:
        return "tmpfs (8 MiB) filled by a file" if self.mounted else "ENOSPC injected at kdforge.files' writes"

    def fill(self, leave: int = 0) -> None:
        """Take all free space but ``leave`` bytes (tmpfs), or make every atomic write fail (injection)."""
        if not self.mounted:
            import kdforge.files as files

            def full(target: Any, *_: Any, **__: Any) -> None:
                target = target if isinstance(target, (str, Path)) else _
                raise OSError(28, os.strerror(28), str(target))

            self.monkeypatch.setattr(files, "atomic_write", full)
            self.monkeypatch.setattr(files, "atomic_replace_dir", lambda build, target: full(target))
            return
        with open(self.filler, "ab") as f:
            block = b"\0" * 4096
            with contextlib.suppress(OSError):
                while os.statvfs(self.root).f_bavail * os.statvfs(self.root).f_frsize > leave:
                    f.write(block)
                    f.flush()

    def free(self) -> None:
        """Give the space back."""
        self.filler.unlink(missing_ok=True)
        self.monkeypatch.undo()

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk", monkeypatch)
    try:
        yield disk
    finally:
        disk.close()


def _full_line(err: str, under: Path) -> str:
    line = one_line(err)
    assert "No space left on device" in line or "no space left on device" in line, line
    assert str(under) in line, f"no path named: {line}"
    return line


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(work, small_disk, monkeypatch, capsys, reliability):
    import kdforge.engine.trainer as trainer
    from kdforge.engine.checkpoint import read_state

    saved: list[dict[str, str]] = []
    real = trainer.save_training_state
    out = small_disk.root / "runs"

    def save_then_fill(target: Any, *args: Any, **kwargs: Any) -> None:
        real(target, *args, **kwargs)
        if Path(target).name == "last" and not saved:
            saved.append(tree_hashes(Path(target)))
            small_disk.fill()  # another process takes the disk right after the first checkpoint

    monkeypatch.setattr(trainer, "save_training_state", save_then_fill)
    code, err = cli_main(monkeypatch, capsys, "run", str(_run_recipe(work, out)))
    assert code == 1, err
    _full_line(err, out)
    run = next(p for p in out.iterdir() if p.is_dir())
    last = run / "checkpoints" / "last"
    assert read_state(last)["step"] == 3 and tree_hashes(last) == saved[0], "the previous checkpoint is intact"
    small_disk.free()
    code, err = cli_main(monkeypatch, capsys, "run", "--resume", str(run))
    assert code == 0, err
    assert read_state(last)["step"] == 6
    reliability.record(
        "full disk",
        f"disk full right after the first checkpoint of `kdforge run` ({small_disk.method})",
        "exit 1, one line naming the path and 'No space left on device'; previous checkpoint intact; "
        "`--resume` after freeing space finishes the run",
        trials=1,
    )


def test_full_disk_during_a_store_build_resumes(store, small_disk, monkeypatch, capsys, reliability):
    _, recipe, content = store
    copy = small_disk.root / "store"
    small_disk.fill(leave=24 << 10 if small_disk.mounted else 0)
    code, err = cli_main(monkeypatch, capsys, "cache", str(recipe), f"store.path={copy}", "--json")
    assert code == 1, err
    _full_line(err, copy)
    small_disk.free()
    code, _ = cli_main(monkeypatch, capsys, "cache", str(recipe), f"store.path={copy}", "--json")
    assert code == 0
    assert json.loads((copy / "manifest.json").read_text())["content_sha256"] == content
    reliability.record(
        "full disk",
        f"disk full during `kdforge cache` ({small_disk.method})",
        "exit 1, one line naming the path and 'No space left on device'; the build resumes after freeing space "
        "to the same content sha256",
        trials=1,
    )


@pytest.mark.parametrize("when", ("before the job", "between two appends"))
def test_full_disk_during_request_cache_appends(request_cache, small_disk, monkeypatch, capsys, when, reliability):
    from kdforge.llm.cache import RequestCache

    cache, server, summary = request_cache
    if not small_disk.mounted:
        pytest.skip("SQLite writes its own file: ENOSPC can only be shown on a real full file system here")
    copy = small_disk.root / "requests.sqlite"
    shutil.copy(cache, copy)
    real, puts = RequestCache.put, []
    if when == "before the job":
        small_disk.fill()
    else:

        def put_then_fill(self: Any, key: str, value: Any) -> None:
            real(self, key, value)
            puts.append(key)
            if len(puts) == 2:
                small_disk.fill()  # another process takes the disk between two appends of a running job

        monkeypatch.setattr(RequestCache, "put", put_then_fill)
    recipe = _annotate_recipe(small_disk.root.parent, server, copy, 12, name="more")
    code, err = cli_main(monkeypatch, capsys, "annotate", str(recipe))
    assert code in (1, 2), err
    _full_line(err, copy)
    small_disk.free()
    with contextlib.closing(sqlite3.connect(copy)) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = con.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    assert stored >= summary["rows"] + len(puts), "the answers stored before the disk filled are kept"
    code, err = cli_main(monkeypatch, capsys, "annotate", str(recipe))
    assert code == 0, err
    done = json.loads((small_disk.root.parent / "annotations" / "more" / "summary.json").read_text())
    # The job's own count (the server's log may still be writing the first job's last line).
    assert done["rows"] == 12 and done["usage"]["cached"] == min(stored, 12)
    assert done["usage"]["requests"] == 12 - min(stored, 12), "only the missing answers are sent again"
    reliability.record(
        "full disk",
        f"disk full {when} of `kdforge annotate` appending to its request cache ({small_disk.method})",
        "one line naming the cache and 'no space left on device'; every answer stored before is intact; the same "
        "command after freeing space sends only the missing requests",
        trials=1,
    )
