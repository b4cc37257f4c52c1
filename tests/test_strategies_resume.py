"""Kill and resume multi-stage and semi-supervised strategies through the CLI, as a user does.

A born-again chain killed in its second generation keeps the finished generation as it is and continues the
interrupted one from its checkpoint; a mean-teacher run killed mid-way restores its EMA teacher with the student.
Both must end bit-identical to a run that was never stopped (same CPU, same threads, same batches).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kdforge.files import readable_dir

from conftest import run_cli

pytestmark = pytest.mark.slow

DIGITS = {"name": "digits", "params": {"val_fraction": 0.1}, "batch_size": 64}
# Dropout (RNG), AdamW (optimizer state), a cosine schedule and shuffled data: everything a resume must restore.
STUDENT = {"name": "mlp", "params": {"hidden": [32], "dropout": 0.1}}
TRAIN = {
    "optimizer": {"name": "adamw", "lr": 0.01},
    "schedule": {"name": "cosine"},
    "log_every": 1,
    "checkpoint_every": 2,
}

BORN_AGAIN = {
    "strategy": {"name": "born_again", "generations": 2},
    "objectives": {"ce": 0.5, "kd": {"weight": 0.5, "T": 4}},
    "train": {**TRAIN, "epochs": 3},  # 19 steps an epoch: 57 a generation
}
MEAN_TEACHER = {
    # weak/strong views auto (flip_crop, strong); a low threshold and a consistency term, so that the EMA teacher's
    # predictions reach the student's gradient from the first steps.
    "strategy": {
        "name": "mean_teacher",
        "labelled_fraction": 0.2,
        "labelled_batch": 8,
        "unlabelled_batch": 32,
        "threshold": 0.5,
        "consistency": 0.5,
    },
    "objectives": {"ce": 1.0},
    "train": {**TRAIN, "epochs": 2},  # 969 unlabeled images, 32 a batch: 31 steps an epoch
}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every process of a test (killed, resumed, uninterrupted) runs with one intra-op thread: the same arithmetic in
    # each, and two of them can share the two cores without torch's thread pool spinning on a busy core.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _recipe(tmp: Path, name: str, sections: dict[str, Any], out: str) -> tuple[Path, Path]:
    root = tmp / out
    tree = {
        "name": name,
        "seed": 3,
        "data": DIGITS,
        "student": STUDENT,
        "profile": False,
        "output_dir": str(root),
        **sections,
    }
    path = tmp / f"{name}-{out}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path, root


def _start(recipe: Path) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("kdforge")
    return subprocess.Popen(
        [str(exe), "run", str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ}
    )


def _run_dir(root: Path) -> Path | None:
    folders = list(root.iterdir()) if root.is_dir() else []
    assert len(folders) <= 1, folders
    return folders[0] if folders else None


def _kill_when(proc: subprocess.Popen[str], root: Path, ready: Callable[[Path], bool], what: str) -> Path:
    """SIGKILL the run as soon as ``ready(run_dir)`` holds; returns its run folder."""
    deadline = time.monotonic() + 240.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        run_dir = _run_dir(root)
        if run_dir is not None and ready(run_dir):
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            assert proc.returncode == -signal.SIGKILL
            return run_dir
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"{what} not reached in 240 s")


def _finish(proc: subprocess.Popen[str], root: Path) -> Path:
    """Wait for an uninterrupted run; returns its run folder."""
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    run_dir = _run_dir(root)
    assert run_dir is not None
    return run_dir


def _train_step(folder: Path) -> int:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    # The last line may be half written when we look.
    steps = [json.loads(line)["step"] for line in lines[:-1] if '"split": "train"' in line]
    return max(steps, default=0)


def _state(folder: Path) -> dict[str, Any]:
    """The last checkpoint's state (a kill between the two renames of its swap leaves the previous one)."""
    return json.loads((readable_dir(folder / "checkpoints" / "last") / "state.json").read_text())


def _assert_bit_identical(got: Path, want: Path) -> None:
    """Two safetensors files hold the same tensors, bit for bit (names, dtypes, shapes and every byte)."""
    a, b = load_file(str(got)), load_file(str(want))
    assert set(a) == set(b), (sorted(a), sorted(b))
    differ = []
    for key in sorted(b):
        x, y = a[key].contiguous(), b[key].contiguous()
        same = (
            x.dtype == y.dtype
            and x.shape == y.shape
            and torch.equal(x.flatten().view(torch.uint8), y.flatten().view(torch.uint8))
        )
        if not same:
            gap = (x.double() - y.double()).abs().max().item() if x.shape == y.shape else None
            differ.append(f"{key} (max |diff| {gap})")
    assert not differ, f"{got.name} differs from the uninterrupted run in: {', '.join(differ)}"


def test_born_again_killed_in_generation_1_resumes_it_and_keeps_generation_0(tmp_path: Path) -> None:
    killed_recipe, killed_root = _recipe(tmp_path, "ban", BORN_AGAIN, "killed")
    full_recipe, full_root = _recipe(tmp_path, "ban", BORN_AGAIN, "full")
    full = _start(full_recipe)  # the uninterrupted reference, alongside
    proc = _start(killed_recipe)

    def gen1_checkpointed(run_dir: Path) -> bool:
        return (run_dir / "gen-1" / "checkpoints" / "last").is_dir()

    run_dir = _kill_when(proc, killed_root, gen1_checkpointed, "a checkpoint of gen-1")
    # Killed with generation 0 finished and generation 1 mid-way.
    gen0_summary = run_dir / "gen-0" / "summary.json"
    assert gen0_summary.is_file() and (run_dir / "gen-0" / "student.safetensors").is_file()
    assert not (run_dir / "gen-1" / "summary.json").exists()
    assert not (run_dir / "gen-2" / "summary.json").exists() and not (run_dir / "summary.json").exists()
    killed_at = _state(run_dir / "gen-1")
    assert not killed_at["finished"] and 0 < killed_at["step"] < 57, killed_at["step"]
    before = (gen0_summary.read_bytes(), gen0_summary.stat().st_mtime_ns)
    gen0_weights = (run_dir / "gen-0" / "student.safetensors").read_bytes()

    res = run_cli("run", "--resume", str(run_dir))
    assert res.returncode == 0, f"killed at gen-1 step {killed_at['step']}: {res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr

    # Generation 0 was not trained again: its summary and student are the very files written before the kill.
    assert (gen0_summary.read_bytes(), gen0_summary.stat().st_mtime_ns) == before
    assert (run_dir / "gen-0" / "student.safetensors").read_bytes() == gen0_weights
    gen1 = json.loads((run_dir / "gen-1" / "summary.json").read_text())
    assert isinstance(gen1["resumed_from_step"], int) and gen1["resumed_from_step"] == killed_at["step"] > 0
    gen2 = json.loads((run_dir / "gen-2" / "summary.json").read_text())
    assert gen2["resumed_from_step"] is None  # not started before the kill: trained from its first step
    assert gen1["steps"] == gen2["steps"] == 57

    reference = _finish(full, full_root)
    for link in ("gen-0", "gen-1", "gen-2"):
        _assert_bit_identical(run_dir / link / "student.safetensors", reference / link / "student.safetensors")
    got, want = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    assert [s["test"] for s in got["stages"]] == [s["test"] for s in want["stages"]]
    assert got["generations_ensemble_test_accuracy"] == want["generations_ensemble_test_accuracy"]
    # The whole run finished once: it is never overwritten.
    again = run_cli("run", "--resume", str(run_dir))
    assert again.returncode == 2 and "already finished" in again.stderr and "Traceback" not in again.stderr


def test_mean_teacher_killed_mid_way_restores_student_and_ema_teacher(tmp_path: Path) -> None:
    killed_recipe, killed_root = _recipe(tmp_path, "mt", MEAN_TEACHER, "killed")
    full_recipe, full_root = _recipe(tmp_path, "mt", MEAN_TEACHER, "full")
    full = _start(full_recipe)
    proc = _start(killed_recipe)
    step = random.Random().randint(9, 50)  # 62 steps, checkpoints every 2

    run_dir = _kill_when(proc, killed_root, lambda d: _train_step(d) >= step, f"step {step}")
    killed_at = _state(run_dir)
    assert not killed_at["finished"] and 0 < killed_at["step"] < 62, killed_at["step"]
    assert not (run_dir / "summary.json").exists()

    res = run_cli("run", "--resume", str(run_dir))
    assert res.returncode == 0, f"killed at step {step}: {res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    resumed = summary["resumed_from_step"]
    assert isinstance(resumed, int) and resumed == killed_at["step"] > 0, (resumed, killed_at["step"], step)

    reference = _finish(full, full_root)
    last, want = run_dir / "checkpoints" / "last", reference / "checkpoints" / "last"
    assert _state(run_dir)["finished"] and _state(reference)["finished"]
    _assert_bit_identical(last / "modules.safetensors", want / "modules.safetensors")  # the student
    _assert_bit_identical(last / "teachers.safetensors", want / "teachers.safetensors")  # the EMA teacher
    expected = json.loads((reference / "summary.json").read_text())
    assert summary["semi"] == expected["semi"] and summary["semi"]["ema_updates"] == summary["steps"] == 62
    assert summary["test"] == expected["test"] and summary["teacher_test"] == expected["teacher_test"]
