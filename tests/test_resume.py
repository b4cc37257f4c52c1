"""Stop and resume through the CLI, as a user does: Ctrl-C, SIGTERM, and finished runs kept.

SIGKILL at random moments, for every long-running command, is tested in test_kill_anywhere.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import run_cli

pytestmark = pytest.mark.slow

# An EMA teacher (teacher state), a warm-up (Balancer schedule), dropout (RNG), shuffled data (order),
# AdamW (optimizer state) and a cosine schedule: everything a resume must restore.
RECIPES = {
    "ema": {
        "teacher": {"kind": "ema", "decay": 0.9},
        "objectives": {"ce": 1.0, "kd": {"weight": 0.5, "T": 2.0, "warmup_steps": 10}},
    },
}


def _recipe(tmp: Path, kind: str, out: str, checkpoint_every: int = 10) -> Path:
    tree = {
        "name": f"resume-{kind}",
        "seed": 3,
        "data": {"name": "digits", "params": {"val_fraction": 0.1}, "batch_size": 32},
        "student": {"name": "mlp", "params": {"hidden": [256, 256], "dropout": 0.1}},
        "train": {
            "epochs": 2,  # two: a resume from the first epoch's end must draw the second epoch's order
            "grad_accum": 1,
            "optimizer": {"name": "adamw", "lr": 0.003},
            "log_every": 1,
            "checkpoint_every": checkpoint_every,
        },
        "output_dir": str(tmp / f"{out}-{kind}"),
        "profile": False,
        **RECIPES[kind],
    }
    path = tmp / f"{kind}-{out}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _start(recipe: Path) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("kdforge")
    return subprocess.Popen(
        [str(exe), "run", str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ}
    )


def _run_dir(root: Path) -> Path:
    (run_dir,) = list(root.iterdir())
    return run_dir


def _train_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if '"train"' in line]
    return max(steps, default=0)


def _wait_for_step(proc: subprocess.Popen[str], root: Path, step: int, limit: float = 240.0) -> Path:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before step {step}: {proc.stderr.read()[-2000:]}")
        if root.is_dir() and any(root.iterdir()):
            run_dir = _run_dir(root)
            if _train_step(run_dir) >= step:
                return run_dir
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"step {step} not reached in {limit} s")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    last = run_dir / "checkpoints" / "last"
    tensors = load_file(str(last / "modules.safetensors"))
    if (last / "teachers.safetensors").is_file():
        tensors.update({f"teacher:{k}": v for k, v in load_file(str(last / "teachers.safetensors")).items()})
    return tensors


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    out = {}
    for kind in RECIPES:
        res = run_cli("run", str(_recipe(tmp, kind, "full")))
        assert res.returncode == 0, res.stderr
        out[kind] = _weights(_run_dir(tmp / f"full-{kind}"))
    return out


def _assert_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        # Same CPU, same threads, same batches: resuming is promised to change no bit.
        assert torch.equal(got[key], value), key


def test_ctrl_c_saves_says_how_to_continue_and_resumes_bit_identical(tmp_path: Path, uninterrupted) -> None:
    recipe = _recipe(tmp_path, "ema", "stopped")
    proc = _start(recipe)
    run_dir = _wait_for_step(proc, tmp_path / "stopped-ema", 10)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "continue with: kdforge run --resume" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert not state["finished"] and state["step"] >= 10
    assert not (run_dir / "summary.json").exists()
    res = run_cli("run", "--resume", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from_step"] == state["step"]
    _assert_identical(_weights(run_dir), uninterrupted["ema"])
    # A finished run is never overwritten.
    again = run_cli("run", "--resume", str(run_dir))
    assert again.returncode == 2 and "already finished" in again.stderr and "Traceback" not in again.stderr


def test_sigkill_after_an_epoch_end_checkpoint_resumes_bit_identical(tmp_path: Path, uninterrupted) -> None:
    # Only epoch ends are checkpointed, so the resume starts a new epoch: its data order must be the one the
    # uninterrupted run drew there (once it depended on how far the previous epoch had drawn from the generator).
    recipe = _recipe(tmp_path, "ema", "epoch", checkpoint_every=0)
    proc = _start(recipe)
    root, deadline = tmp_path / "epoch-ema", time.monotonic() + 240
    state: dict = {}
    while not (state.get("step") and state.get("micro") == 0 and not state.get("finished")):
        assert proc.poll() is None and time.monotonic() < deadline, "no epoch-end checkpoint before the run ended"
        found = list(root.glob("*/checkpoints/last/state.json"))
        try:
            state = json.loads(found[0].read_text()) if found else {}
        except (OSError, ValueError):
            state = {}  # being replaced at this moment
        time.sleep(0.005)
    proc.kill()
    proc.communicate(timeout=60)
    run_dir = _run_dir(root)
    res = run_cli("run", "--resume", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from_step"] >= state["step"]
    _assert_identical(_weights(run_dir), uninterrupted["ema"])


def test_sigterm_stops_cleanly_with_a_checkpoint(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "ema", "term")
    proc = _start(recipe)
    run_dir = _wait_for_step(proc, tmp_path / "term-ema", 5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "checkpoint saved" in stderr, stderr
    assert (run_dir / "checkpoints" / "last" / "state.json").is_file()


def test_a_new_run_sweeps_what_a_run_killed_while_writing_its_recipe_left(tmp_path: Path, dead_pid: int) -> None:
    from kdforge.engine.rundir import RunDir

    killed = tmp_path / "demo-20261203-121432"  # claimed, then killed inside its first write: no recipe.yaml
    killed.mkdir()
    dead = killed / f".recipe.yaml.{dead_pid}.1vur1huv.tmp"
    dead.write_text("name: dem")
    starting = tmp_path / "demo-20261203-121433"  # another run, alive, writing its recipe right now
    starting.mkdir()
    alive = starting / f".recipe.yaml.{os.getpid()}.abcd1234.tmp"
    alive.write_text("name: de")
    finished = tmp_path / "demo-20261203-121000"
    finished.mkdir()
    (finished / "recipe.yaml").write_text("name: demo\n")
    kept = finished / f".summary.json.{dead_pid}.abcd1234.tmp"  # a resume of that run sweeps it, not a new run
    kept.write_text("{")
    run = RunDir.new(tmp_path, "demo")
    assert not dead.exists() and killed.is_dir()
    assert alive.exists() and kept.exists() and run.path.is_dir()
