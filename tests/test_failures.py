"""Failure paths: damaged checkpoints and caches, killed writes, file modes, bad parameters, CLI exit codes."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

import kdforge.recipes
from kdforge import cli
from kdforge.engine.checkpoint import MODEL_FILE, STATE_FILE, load_checkpoint, read_state, save_checkpoint
from kdforge.errors import ConfigError, IntegrityError, Interrupted
from kdforge.files import atomic_replace_dir, atomic_write, sealed_json, sweep_staging
from kdforge.recipe import load_yaml
from kdforge.runner import resolve


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _edit_state(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    state = json.loads((folder / STATE_FILE).read_text())
    change(state)
    # Re-sealed: these tests are about well-formed records with bad content, not about a damaged file.
    (folder / STATE_FILE).write_text(sealed_json(state))


# --- checkpoints -------------------------------------------------------------------------------------------------


def test_checkpoint_without_files_record_is_refused(tmp_path: Path):
    save_checkpoint(tmp_path / "ck", _model(), {"step": 3})
    _edit_state(tmp_path / "ck", lambda s: s.pop("files"))
    with pytest.raises(IntegrityError, match=r"checkpoint '.*ck': state\.json has no 'files'"):
        load_checkpoint(tmp_path / "ck", _model())


def test_checkpoint_with_an_unrecorded_file_is_refused(tmp_path: Path):
    save_checkpoint(tmp_path / "ck", _model(), {"step": 3}, torch.optim.SGD(_model().parameters(), lr=0.1))
    _edit_state(tmp_path / "ck", lambda s: s["files"].pop(MODEL_FILE))
    with pytest.raises(IntegrityError, match=r"'model\.safetensors' is not recorded in state\.json 'files'"):
        read_state(tmp_path / "ck")
    # A file recorded as a path leading out of the folder is refused too.
    save_checkpoint(tmp_path / "ck2", _model(), {"step": 3})
    _edit_state(tmp_path / "ck2", lambda s: s["files"].update({"../ck/state.json": "0" * 64}))
    with pytest.raises(IntegrityError, match=r"missing or does not match its sha256"):
        read_state(tmp_path / "ck2")


def test_flipped_byte_in_weights_is_refused_by_load(tmp_path: Path):
    save_checkpoint(tmp_path / "ck", _model(), {"step": 1})
    path = tmp_path / "ck" / MODEL_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.safetensors' is missing or does not match its sha256"):
        load_checkpoint(tmp_path / "ck", _model())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", r"is not valid JSON"),
        ("[1, 2]", r"holds a list; expected a mapping"),
        (b"\xff\xfe", "is not valid JSON"),
    ],
)
def test_malformed_state_json_names_the_file(tmp_path: Path, text: str | bytes, expected: str):
    save_checkpoint(tmp_path / "ck", _model(), {"step": 1})
    state = tmp_path / "ck" / STATE_FILE
    state.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(IntegrityError, match=rf"checkpoint state '.*ck/state\.json' {expected}") as info:
        read_state(tmp_path / "ck")
    assert "\n" not in str(info.value)


def test_staging_folders_of_a_killed_write_are_swept_by_the_next_writer(tmp_path: Path):
    save_checkpoint(tmp_path / "last", _model(), {"step": 1})
    # What `kill -9` during a write leaves: staging folders named like mkdtemp's, half full.
    for name in (".last.k1ll3d_1", ".last.abcdefgh"):
        (tmp_path / name).mkdir()
        (tmp_path / name / MODEL_FILE).write_bytes(b"half")
    keep = [tmp_path / ".best.abcdefgh", tmp_path / ".last.not-a-staging-dir", tmp_path / ".last.x"]
    for folder in keep:
        folder.mkdir()
    save_checkpoint(tmp_path / "last", _model(), {"step": 2})
    assert read_state(tmp_path / "last")["step"] == 2
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["last", *(p.name for p in keep)]), "only `last`'s own staging folders are swept"


def test_a_staging_folder_still_being_written_is_not_swept(tmp_path: Path):
    seen: list[Path] = []

    def build(staging: Path) -> None:
        (staging / "a.txt").write_text("x")
        seen.extend(sweep_staging(tmp_path / "ck"))  # another writer sweeping now must leave this one alone

    atomic_replace_dir(build, tmp_path / "ck")
    assert seen == [] and (tmp_path / "ck" / "a.txt").read_text() == "x"


def test_backup_left_by_a_kill_is_never_swept_and_comes_back(tmp_path: Path):
    save_checkpoint(tmp_path / "last", _model(), {"step": 1})
    (tmp_path / "last").rename(tmp_path / ".last.old")  # a kill between the two renames
    assert sweep_staging(tmp_path / "last") == []
    assert read_state(tmp_path / "last")["step"] == 1
    save_checkpoint(tmp_path / "last", _model(), {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_files_and_folders_follow_the_umask(tmp_path: Path, umask: Callable[[int], None], mask: int):
    umask(mask)
    save_checkpoint(tmp_path / "ck", _model(), {"step": 1}, torch.optim.AdamW(_model().parameters()))
    atomic_write(tmp_path / "shard.safetensors", lambda p: p.write_bytes(b"x"))
    from safetensors.torch import save_file

    atomic_write(tmp_path / "t.safetensors", lambda p: save_file({"a": torch.zeros(1)}, str(p)))
    files = [*(tmp_path / "ck").iterdir(), tmp_path / "shard.safetensors", tmp_path / "t.safetensors"]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~mask) for p in files}
    assert oct((tmp_path / "ck").stat().st_mode & 0o777) == oct(0o777 & ~mask)


# --- kdforge eval of a checkpoint a kill left as `.last.old` -------------------------------------------------------


def test_eval_reads_a_checkpoint_left_as_old_by_a_kill(tmp_path: Path):
    from kdforge.data import load_dataset
    from kdforge.models import build_model
    from kdforge.rerun import evaluate_run

    recipe = {
        "name": "tiny",
        "data": {"name": "digits"},
        "student": {"name": "mlp", "params": {"hidden": [8]}},
        "objectives": {"ce": 1.0},
    }
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    bundle = load_dataset("digits")
    student = build_model("mlp", bundle.num_classes, bundle.input_shape, hidden=(8,))
    save_checkpoint(run / "checkpoints" / "last", student, {"step": 5})
    (run / "checkpoints" / "last").rename(run / "checkpoints" / ".last.old")
    rows, path = evaluate_run(run, "last")
    assert rows[-1]["step"] == 5 and path.is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [".last.old"], "readers never rename"


# --- teacher cache -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["{oops", "[]", '{"model": "mlp"}'])
def test_malformed_teacher_meta_names_the_file_and_says_to_delete_the_folder(
    tmp_path: Path, teacher_cache: str, text: str
):
    from kdforge.strategies.provision import train_teacher

    tree = {
        "data": {"name": "digits"},
        "teacher": {"kind": "live", "model": {"name": "mlp", "params": {"hidden": [8]}}, "cache_dir": teacher_cache},
        "student": {"name": "mlp", "params": {"hidden": [8]}},
    }
    recipe = resolve(tree)
    _, info = train_teacher(recipe, allow_training=False)
    cache = Path(info["cache"])
    cache.mkdir(parents=True)
    (cache / "meta.json").write_text(text)
    with pytest.raises(IntegrityError, match=r"cached teacher file '.*meta\.json' .* delete the folder") as err:
        train_teacher(recipe, allow_training=False)
    assert "\n" not in str(err.value)


# --- recipe checks -----------------------------------------------------------------------------------------------

DEMO = load_yaml(kdforge.recipes.find("fmnist-demo"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("student.params.hidden=abc", "student.params.hidden='abc': expected a list of integers"),
        ("student.params.dropout=abc", "student.params.dropout='abc': expected a number"),
        ("student.params.dropout=true", "student.params.dropout=True: expected a number"),
        ("data.params.val_fraction=x", "data.params.val_fraction='x': expected a number"),
        ("data.params.train_limit=1.5", "data.params.train_limit=1.5: expected an integer or null"),
        ("teacher.model.params.widths=[1, x]", "teacher.model.params.widths=[1, 'x']: expected a list of integers"),
        ("name=../../etc", "name: name '../../etc' (9 characters): expected 1-64 characters"),
        ("name=" + "n" * 300, "(300 characters): expected 1-64 characters"),
        ("name=-rf", "name: name '-rf'"),
        ("seed=-1", "seed: Input should be greater than or equal to 0"),
        ("seed=4294967296", "seed: Input should be less than or equal to 4294967295"),
        ("seed=1.5", "seed: Input should be a valid integer"),
        ('variants={"../x": {}}', "variants: variant name '../x'"),
    ],
)
def test_bad_names_seeds_and_parameter_types_are_refused_by_key(override: str, message: str):
    with pytest.raises(ConfigError) as err:
        resolve(DEMO, [override])
    assert message in str(err.value)


@pytest.mark.parametrize(
    "override", ["student.params.hidden=[64, 32]", "data.params.train_limit=null", "seed=4294967295", "name=a.b_c-1"]
)
def test_valid_values_still_resolve(override: str):
    resolve(DEMO, [override])


# --- CLI exit codes ----------------------------------------------------------------------------------------------


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], raise_: Any, *args: str) -> Any:
    """Run ``kdforge [args] recipes`` in process with the command raising ``raise_``; returns (code, stderr)."""

    def broken() -> dict[str, Path]:
        secret = "s3cret-token"  # noqa: F841 (a local a pretty traceback would show)
        if callable(raise_) and not isinstance(raise_, BaseException):
            raise_()
        raise raise_

    monkeypatch.setattr(kdforge.recipes, "builtin", broken)
    monkeypatch.setattr(sys, "argv", ["kdforge", *args, "recipes"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_user_error_exits_2_on_one_line_however_long(monkeypatch, capsys):
    message = "data.name: unknown data set 'x' [bold]; valid: " + ", ".join(f"set{i}" for i in range(60))
    code, err = _cli(monkeypatch, capsys, ConfigError(message))
    assert code == 2 and _one_line(err) == f"error: {message}", "not wrapped, no markup eaten"


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/runs/x/model.safetensors"), "No space left on device"),
        (PermissionError(errno.EACCES, "Permission denied", "/runs"), "Permission denied (EACCES)"),
    ],
)
def test_os_error_is_one_line_naming_the_path_exit_1(monkeypatch, capsys, exc: OSError, text: str):
    code, err = _cli(monkeypatch, capsys, exc)
    line = _one_line(err)
    assert code == 1 and line.startswith("error: ") and repr(exc.filename) in line and text in line


def test_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    code, err = _cli(monkeypatch, capsys, RuntimeError("boom:\n\tmissing key(s)"))
    assert code == 1
    assert _one_line(err) == "internal error: RuntimeError: boom: missing key(s) (run with --debug for the traceback)"
    code, err = _cli(monkeypatch, capsys, RuntimeError("boom"), "--debug")
    assert code == 1 and "Traceback (most recent call last)" in err and "RuntimeError: boom" in err
    assert "s3cret-token" not in err, "tracebacks never print local variables"
    code, err = _cli(monkeypatch, capsys, RuntimeError("again"))  # --debug does not stick to the next call
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (KeyboardInterrupt(), 130, "interrupted"),
        (Interrupted(signal.SIGINT), 130, "interrupted by signal 2"),
        (
            Interrupted(signal.SIGTERM, "stopped at step 40; checkpoint saved"),
            143,
            "stopped at step 40; checkpoint saved",
        ),
    ],
)
def test_interrupts_exit_128_plus_the_signal(monkeypatch, capsys, exc: BaseException, code: int, line: str):
    got, err = _cli(monkeypatch, capsys, exc)
    assert got == code and _one_line(err) == line


def test_sigterm_runs_the_clean_path_and_exits_143(monkeypatch, capsys, tmp_path: Path):
    before = signal.getsignal(signal.SIGTERM)

    def terminated() -> None:
        # A write in progress when SIGTERM arrives: it is abandoned cleanly, the previous folder survives.
        save_checkpoint(tmp_path / "ck", _model(), {"step": 1})

        def build(staging: Path) -> None:
            (staging / "partial").write_text("x")
            os.kill(os.getpid(), signal.SIGTERM)

        atomic_replace_dir(build, tmp_path / "ck")

    code, err = _cli(monkeypatch, capsys, terminated)
    assert code == 143 and _one_line(err) == "interrupted by SIGTERM"
    assert read_state(tmp_path / "ck")["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert signal.getsignal(signal.SIGTERM) == before, "main() restores the previous handler"


def test_usage_error_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["kdforge", "no-such-command"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2 and "No such command" in capsys.readouterr().err


def test_success_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["kdforge", "recipes", "--json"])
    cli.main()  # returns normally: exit status 0
    assert "fmnist-demo" in capsys.readouterr().out
