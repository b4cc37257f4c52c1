"""Experiment tracking: one run logged to TensorBoard and MLflow, stopped, resumed, and every value read back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from kdforge.engine.tracking import Tracking, TrackPlan, flatten, mask_secrets, metric_key, tracked_values
from kdforge.errors import ConfigError
from kdforge.recipe import validate

from conftest import run_cli

pytest.importorskip("tensorboard", reason="the `track` extra installs tensorboard")
pytest.importorskip("mlflow", reason="the `track` extra installs mlflow-skinny")

from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TRAIN_KEYS = ("loss", "lr", "epoch")  # plus term/<name> and weighted/<name> of every objective term


def _recipe(tmp: Path) -> Path:
    tree = {
        "name": "tracked",
        "seed": 1,
        "data": {"name": "digits", "params": {"val_fraction": 0.1}, "batch_size": 32},
        "student": {"name": "mlp", "params": {"hidden": [32]}},
        "objectives": {"ce": 0.7, "ls": {"objective": "ce", "weight": 0.3, "label_smoothing": 0.1}},
        "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 0.003}, "log_every": 1},
        "output_dir": str(tmp / "runs"),
        "profile": False,
        "track": {"backends": ["tensorboard", "mlflow"]},
        "variants": {"a": {}, "b": {"train.optimizer.lr": 0.001}},
    }
    path = tmp / "tracked.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _train_steps(metrics: Path) -> int:
    if not metrics.is_file():
        return 0
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return max((r["step"] for r in lines if r.get("split") == "train"), default=0)


def _stopped_run(tmp: Path) -> Path:
    """Start the run, Ctrl-C it inside variant a at step >= 3; returns the run folder."""
    exe = Path(sys.executable).with_name("kdforge")
    proc = subprocess.Popen(
        [str(exe), "run", str(_recipe(tmp))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        folders = list((tmp / "runs").glob("tracked-*"))
        if folders and _train_steps(folders[0] / "a" / "metrics.jsonl") >= 3:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr  # the stop line alone: trackers print nothing
    return folders[0]


def _expected(metrics: Path) -> dict[str, dict[int, float]]:
    """What the trackers must hold, written out from metrics.jsonl independently of the tracking module."""
    out: dict[str, dict[int, float]] = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        record.pop("sha256_self", None)  # each line's seal (files.sealed_line): bookkeeping, never a metric
        step, split = record["step"], record["split"]
        for key, value in record.items():
            if split == "train" and (key in TRAIN_KEYS or key.startswith(("term/", "weighted/"))):
                out.setdefault(key, {})[step] = value
            elif split != "train" and key not in ("split", "step", "epoch", "n"):
                out.setdefault(f"{split}/{key}", {})[step] = value
    return out


def test_one_run_in_tensorboard_and_mlflow_stopped_resumed_read_back(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run_dir = _stopped_run(tmp_path)
    first = json.loads((run_dir / "a" / "tracking.json").read_text())
    uri = f"file:{run_dir / 'tracking' / 'mlruns'}"
    assert first["mlflow_uri"] == uri
    client = MlflowClient(uri)
    # Ctrl-C closed both trackers: the MLflow run is marked KILLED, TensorBoard's events are on disk up to the stop.
    assert client.get_run(first["mlflow_run_id"]).info.status == "KILLED"
    stopped = EventAccumulator(first["tensorboard_dir"], {"scalars": 0})
    stopped.Reload()
    assert max(e.step for e in stopped.Scalars("loss")) == _train_steps(run_dir / "a" / "metrics.jsonl") >= 3
    res = run_cli("run", "--resume", str(run_dir))
    assert res.returncode == 0, res.stderr
    (experiment,) = [e for e in client.search_experiments() if e.name == "tracked"]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"a", "b"}  # one tracker run per variant, named after it
    # The resume continued variant a's MLflow run; both runs ended cleanly.
    assert runs["a"].info.run_id == first["mlflow_run_id"]
    assert json.loads((run_dir / "a" / "tracking.json").read_text())["mlflow_run_id"] == first["mlflow_run_id"]
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert runs["b"].data.params["train.optimizer.lr"] == "0.001"
    assert runs["a"].data.params["objectives.ls.label_smoothing"] == "0.1"
    for variant in ("a", "b"):
        expected = _expected(run_dir / variant / "metrics.jsonl")
        # Every term, the learning rate and every evaluation metric of both splits, at every optimizer step.
        terms = {"term/ce", "term/ls", "weighted/ce", "weighted/ls"}
        assert {*terms, "loss", "lr", "epoch", "val/accuracy", "val/nll", "test/accuracy", "test/ece"} <= set(expected)
        assert len(expected["loss"]) == max(expected["loss"]) > 30
        history = {key: client.get_metric_history(runs[variant].info.run_id, key) for key in expected}
        for key, values in expected.items():
            # MLflow stores float64: exactly the logged value, once per step (no step logged twice by the resume).
            assert [(m.step, m.value) for m in sorted(history[key], key=lambda m: m.step)] == sorted(values.items())
        events = EventAccumulator(str(run_dir / "tracking" / "tensorboard" / run_dir.name / variant), {"scalars": 0})
        events.Reload()
        assert set(events.Tags()["scalars"]) == set(expected)
        for key, values in expected.items():
            # TensorBoard stores float32: the logged value rounded to float32, exactly.
            got = {e.step: e.value for e in events.Scalars(key)}
            assert got == {s: float(np.float32(v)) for s, v in values.items()}, key


def test_an_unknown_backend_exits_2_naming_the_key_and_the_allowed_values(tmp_path: Path) -> None:
    res = run_cli("run", str(_recipe(tmp_path)), "track.backends=[tensorboard, wandb]")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "error: invalid recipe: track.backends.1: Input should be 'tensorboard' or 'mlflow'"
    ), res.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_missing_backend_package_names_the_pip_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what Python sees when mlflow is not installed
    with pytest.raises(ConfigError) as err:
        validate({"student": {"name": "mlp"}, "track": ["tensorboard", "mlflow"]})
    assert str(err.value) == (
        "invalid recipe: track.backends.1: 'mlflow' needs the mlflow package; "
        "install it with: pip install 'kdforge[track]'"
    )


def test_track_shorthands_and_default() -> None:
    base = {"student": {"name": "mlp"}}
    assert validate(base).track is None
    assert validate({**base, "track": "mlflow"}).track.backends == ["mlflow"]
    assert validate({**base, "track": ["mlflow", "mlflow"]}).track.backends == ["mlflow"]
    with pytest.raises(ConfigError, match=r"track\.folder: unknown key; allowed keys: backends, dir, experiment"):
        validate({**base, "track": {"folder": "x"}})


def test_records_become_tracker_values() -> None:
    train = {"split": "train", "step": 7, "epoch": 0.5, "lr": 0.01, "loss": 1.25, "term/kd": 2.0, "weighted/kd": 1.0}
    assert tracked_values(train) == (7, {"epoch": 0.5, "lr": 0.01, "loss": 1.25, "term/kd": 2.0, "weighted/kd": 1.0})
    val = {"split": "val@b", "step": 9, "epoch": 1.0, "accuracy": 0.5, "kl": 0.25, "n": 100}
    assert tracked_values(val) == (9, {"val_b/accuracy": 0.5, "val_b/kl": 0.25})
    assert metric_key("a <- b") == "a _- b"
    tree = {"train": {"optimizer": {"lr": 0.1}, "milestones": [1, 2]}, "teacher": None, "select": {}, "on": True}
    assert flatten(tree) == {
        "train.optimizer.lr": 0.1,
        "train.milestones": "[1, 2]",
        "teacher": "null",
        "select": "{}",
        "on": True,
    }


def _killed_run(tmp: Path) -> tuple[Path, int]:
    """Start a plain tracked run, SIGKILL it 3+ logged steps past a checkpoint; (run folder, checkpoint step)."""
    tree = yaml.safe_load(_recipe(tmp).read_text())
    del tree["variants"]
    tree["train"].update({"epochs": 2, "checkpoint_every": 10})
    tree["track"]["dir"] = "elsewhere"  # relative: the run folder's, wherever the resume runs from
    path = tmp / "killed.yaml"
    path.write_text(yaml.safe_dump(tree))
    exe = Path(sys.executable).with_name("kdforge")
    proc = subprocess.Popen([str(exe), "run", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, saved = time.monotonic() + 120, 0
    while time.monotonic() < deadline and proc.poll() is None:
        folders = list((tmp / "runs").glob("tracked-*"))
        state = folders[0] / "checkpoints" / "last" / "state.json" if folders else None
        if state is not None and state.is_file():
            try:
                saved = json.loads(state.read_text())["step"]
            except (json.JSONDecodeError, KeyError):
                saved = 0
            if saved and _train_steps(folders[0] / "metrics.jsonl") >= saved + 3:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.005)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed past a checkpoint"
    return folders[0], saved


def test_a_hard_kill_past_a_checkpoint_logs_each_step_once_after_the_resume(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run_dir, saved = _killed_run(tmp_path)
    state = json.loads((run_dir / "tracking.json").read_text())
    assert state["mlflow_uri"] == f"file:{run_dir / 'elsewhere' / 'mlruns'}"
    client = MlflowClient(state["mlflow_uri"])
    before = max(m.step for m in client.get_metric_history(state["mlflow_run_id"], "loss"))
    # Steps past the checkpoint reached MLflow before the kill (the kill comes 3 steps past it in metrics.jsonl;
    # MLflow may trail that file by a step on a busy machine).
    assert before > saved
    res = run_cli("run", "--resume", str(run_dir), cwd=tmp_path / "runs")
    assert res.returncode == 0, res.stderr
    assert json.loads((run_dir / "tracking.json").read_text())["mlflow_run_id"] == state["mlflow_run_id"]
    expected = _expected(run_dir / "metrics.jsonl")
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) > before and len(expected["loss"]) == max(expected["loss"])
    for key, values in expected.items():
        history = client.get_metric_history(state["mlflow_run_id"], key)
        logged = sorted((m.step, m.value) for m in history)
        assert len({s for s, _ in logged}) == len(logged), key  # no step twice
        assert logged == sorted(values.items()), key
    events = EventAccumulator(state["tensorboard_dir"], {"scalars": 0})
    events.Reload()
    for key, values in expected.items():
        scalars = events.Scalars(key)
        assert len({e.step for e in scalars}) == len(scalars), key
        assert {e.step: e.value for e in scalars} == {s: float(np.float32(v)) for s, v in values.items()}, key


def test_secrets_are_masked_in_tracked_parameters() -> None:
    tree = {
        "teacher": {"kind": "served", "api_key": "sk-123", "model": "m", "extra_body": {"seed": 1},
                    "headers": {"X-Trace": "t"}, "auth_token": None},
        "data": {"params": {"password_file": "p", "max_len": 32}},
        "Cookie": ["a"],
        "lr": 0.1,
    }  # fmt: skip
    masked = mask_secrets(tree)
    assert flatten(masked) == {
        "teacher.kind": "served",
        "teacher.api_key": "***",
        "teacher.model": "m",
        "teacher.extra_body": "***",
        "teacher.headers": "***",
        "teacher.auth_token": "null",
        "data.params.password_file": "***",
        "data.params.max_len": 32,
        "Cookie": "***",
        "lr": 0.1,
    }
    assert tree["teacher"]["api_key"] == "sk-123"  # the recipe itself is left as it was


def test_a_damaged_tracking_json_is_a_config_error_naming_it(tmp_path: Path) -> None:
    plan = TrackPlan(("mlflow",), tmp_path / "tb", f"file:{tmp_path}/mlruns", "e", "r", tmp_path, {})
    for text in ("{not json", "[1, 2]", '{"mlflow_run_id": 3}'):
        (tmp_path / "tracking.json").write_text(text)
        with pytest.raises(ConfigError, match=r"tracking\.json' is damaged") as err:
            Tracking(plan)._saved_state()
        assert repr(str(tmp_path / "tracking.json")) in str(err.value)
