"""`kdforge eval` end to end: a run folder, a checkpoint folder and an ONNX export.

The run is trained by the console script; the commands on it run in process, through typer's CliRunner (success) or
the console script's own entry point ``kdforge.cli.main`` (errors: exit code and the one line on stderr), which saves
the seconds each `import kdforge` costs a new process.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kdforge.cli import app, main
from kdforge.files import sha256_file

from conftest import run_cli

pytestmark = pytest.mark.slow

CLASSIFICATION = {"accuracy", "top5", "macro_f1", "nll", "brier", "ece", "agreement", "kl", "n"}
PROFILE = {
    "params",
    "size_bytes",
    "flops_per_sample",
    "latency_ms_b1",
    "latency_ms_b1_p95",
    "latency_ms_bN",
    "latency_ms_bN_p95",
    "batch_size",
    "throughput_per_s",
    "cpu_share",
    "busy",
}
ENTRY = {"metrics", "per_class", "confusion", "reliability", "kl_per_position", "profile", "plots", "checkpoint"}


def _check_record(path: Path, names: list[str], checkpoint: str) -> dict[str, Any]:
    """The record at ``path`` holds every key of the schema, for the models ``names`` (teacher first)."""
    record = json.loads(path.read_text())
    assert set(record) == {"checkpoint", "source", "kind", "class_names", "rows", "models"}
    assert record["kind"] == "classification" and record["checkpoint"] == checkpoint
    assert record["class_names"][0] == "T-shirt/top" and len(record["class_names"]) == 10
    assert list(record["models"]) == names and [r["name"] for r in record["rows"]] == names
    for name, entry in record["models"].items():
        assert set(entry) == ENTRY, name
        assert set(entry["metrics"]) == CLASSIFICATION and set(entry["profile"]) == PROFILE
        metrics, profile = entry["metrics"], entry["profile"]
        assert 0.3 < metrics["accuracy"] <= metrics["top5"] <= 1 and metrics["n"] == 10_000
        assert (metrics["agreement"] is None) == (name == "teacher")
        assert len(entry["per_class"]) == 10 and sum(c["support"] for c in entry["per_class"]) == 10_000
        assert set(entry["per_class"][0]) == {"class", "support", "accuracy", "agreement", "kl"}
        assert len(entry["confusion"]) == 10 and sum(map(sum, entry["confusion"])) == 10_000
        assert len(entry["reliability"]["edges"]) == 16 and sum(entry["reliability"]["count"]) == 10_000
        assert entry["kl_per_position"] is None and profile["flops_per_sample"] > 0
        assert profile["batch_size"] == 64 and profile["latency_ms_bN_p95"] >= profile["latency_ms_bN"] > 0
        assert (path.parent / entry["plots"]["reliability"]).read_bytes()[:4] == b"\x89PNG"
    for row in record["rows"]:
        assert row["latency_ms_b64"] == record["models"][row["name"]]["profile"]["latency_ms_bN"]
        assert {"accuracy", "agreement", "kl", "ece", "nll", "params", "size_kb", "latency_ms_b1"} <= set(row)
    return record


@pytest.fixture(scope="module")
def fmnist_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fmnist-demo recipe made seconds-long: an MLP teacher of 30 steps, 500 transfer images, 8 steps."""
    from kdforge.data.fashion_mnist import locate

    try:
        locate(None)
    except Exception:
        pytest.skip("Fashion-MNIST files are not installed (run `make data`)")
    out = tmp_path_factory.mktemp("runs")
    res = run_cli(
        "run",
        "fmnist-demo",
        f"output_dir={out / 'runs'}",
        f"teacher.cache_dir={out / 'teachers'}",
        "data.params.train_limit=500",
        "teacher.model={name: mlp, params: {hidden: [16]}}",
        "teacher.train.max_steps=30",
        "student.params.hidden=[32]",
        "train.max_steps=8",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = list((out / "runs").iterdir())
    return run_dir


def _cli(*args: str) -> Any:
    """`kdforge ARGS` in process; fails the test with the traceback of any error."""
    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output[-3000:]
    return res


def test_eval_of_a_run_folder_and_of_a_checkpoint(fmnist_run: Path):
    res = _cli("eval", str(fmnist_run), "--batch-size", "64")
    assert f"written: {fmnist_run / 'eval-last.json'}" in res.stdout and "teacher" in res.stdout
    # The terminal table: every column of the record, the large batch headed with its size (no "b256" dash).
    for heading in ("top-5", "macro-F1", "Brier", "FLOPs/sample", "p95", "b64", "throughput/s"):
        assert heading in res.stdout, heading
    assert "b256" not in res.stdout
    record = _check_record(fmnist_run / "eval-last.json", ["teacher", "scratch", "kd"], "last")
    # Each student's entry names the checkpoint it was made from (report re-evaluates when that changes).
    assert record["models"]["teacher"]["checkpoint"] is None
    for name in ("scratch", "kd"):
        state = fmnist_run / name / "checkpoints" / "last" / "state.json"
        expected = {"folder": name, "step": json.loads(state.read_text())["step"], "sha256": sha256_file(state)}
        assert record["models"][name]["checkpoint"] == expected
    for name, entry in record["models"].items():  # the machine may be busy here: then the CLI said so
        warned = f"warning: {name}: this process got" in res.output
        assert warned == entry["profile"]["busy"] == (entry["profile"]["cpu_share"] < 0.8), res.output
    summary = json.loads((fmnist_run / "summary.json").read_text())["rows"]
    assert record["rows"][-1]["accuracy"] == pytest.approx(summary[-1]["accuracy"])
    assert sorted(p.name for p in (fmnist_run / "eval").iterdir()) == [
        "kd-reliability.png",
        "scratch-reliability.png",
        "teacher-reliability.png",
    ]

    _cli("eval", str(fmnist_run / "kd" / "checkpoints" / "last"), "--batch-size", "64")
    again = _check_record(fmnist_run / "kd" / "eval-last.json", ["teacher", "kd"], "last")
    assert again["models"]["kd"]["metrics"] == record["models"]["kd"]["metrics"]


def test_eval_of_an_onnx_export(fmnist_run: Path):
    _cli("export", str(fmnist_run), "--format", "onnx")
    folder = fmnist_run / "export" / "onnx" / "kd"
    res = _cli("eval", str(folder), "--batch-size", "64")
    assert f"written: {folder / 'eval.json'}" in res.stdout
    record = _check_record(folder / "eval.json", ["teacher", "kd (onnx)"], "last")
    onnx = record["models"]["kd (onnx)"]
    assert onnx["profile"]["size_bytes"] == json.loads((folder / "export.json").read_text())["size_bytes"]
    reference_path = fmnist_run / "kd" / "eval-last.json"  # written by the test above
    if reference_path.is_file():  # the artifact matches the PyTorch student to 1e-4: the same predictions
        reference = json.loads(reference_path.read_text())
        assert onnx["metrics"]["accuracy"] == pytest.approx(reference["models"]["kd"]["metrics"]["accuracy"], abs=2e-4)
        assert onnx["profile"]["flops_per_sample"] == reference["models"]["kd"]["profile"]["flops_per_sample"]


def _one_line_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    """Run ``kdforge ARGS`` through the console script's entry point: exit code 2 and one line on stderr."""
    monkeypatch.setattr(sys, "argv", ["kdforge", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_eval_error_paths(
    tmp_path: Path, fmnist_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    line = _one_line_error(capsys, monkeypatch, "eval", str(tmp_path))
    assert repr(str(tmp_path)) in line and "not a run folder, a checkpoint folder or an export folder" in line
    assert "recipe.yaml" in line and "export.json" in line
    line = _one_line_error(capsys, monkeypatch, "eval", str(tmp_path / "nope"))
    assert repr(str(tmp_path / "nope")) in line and "does not exist" in line
    missing = fmnist_run / "kd" / "checkpoints" / "gone"
    line = _one_line_error(capsys, monkeypatch, "eval", str(fmnist_run), "--checkpoint", "gone")
    assert "--checkpoint 'gone': expected one of last, best" in line  # a name, never a path (no '../')
    line = _one_line_error(capsys, monkeypatch, "eval", str(missing))
    assert repr(str(missing)) in line and "does not exist" in line
    # A variant named "teacher" would overwrite the teacher's entry: refused, naming the variant.
    renamed = tmp_path / "renamed"
    shutil.copytree(fmnist_run, renamed, ignore=shutil.ignore_patterns("eval*", "export"))
    tree = yaml.safe_load((renamed / "recipe.yaml").read_text())
    tree["variants"] = {("teacher" if k == "kd" else k): v for k, v in tree["variants"].items()}
    (renamed / "recipe.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    (renamed / "kd").rename(renamed / "teacher")
    variant = yaml.safe_load((renamed / "teacher" / "recipe.yaml").read_text())
    (renamed / "teacher" / "recipe.yaml").write_text(yaml.safe_dump({**variant, "name": "teacher"}, sort_keys=False))
    line = _one_line_error(capsys, monkeypatch, "eval", str(renamed))
    assert line.startswith("error: variant 'teacher': the evaluation record names the run's teacher so"), line


@pytest.fixture(scope="module")
def two_teachers_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits, two variants taught by different teachers (one overrides teacher.model)."""
    root = tmp_path_factory.mktemp("teachers")
    tree = {
        "name": "two-teachers",
        "data": {"name": "digits", "params": {"val_fraction": 0.1}, "batch_size": 64},
        "teacher": {"kind": "live", "model": {"name": "mlp", "params": {"hidden": [32]}},
                    "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.003}}, "cache_dir": str(root / "t")},
        "student": {"name": "mlp", "params": {"hidden": [16]}},
        "objectives": {"ce": 0.5, "kd": {"weight": 0.5, "T": 4}},
        "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 0.003}, "log_every": 5},
        "variants": {"small": {"teacher.model.params.hidden": [4]}, "kd": {}},
        "profile": False,
        "output_dir": str(root / "runs"),
    }  # fmt: skip
    from kdforge.runner import resolve, run

    return Path(run(resolve(tree))["run_dir"])


def test_each_variant_is_evaluated_against_its_own_teacher(two_teachers_run: Path) -> None:
    import json

    from kdforge.rerun import evaluate_path

    record, _ = evaluate_path(two_teachers_run)
    assert list(record["models"]) == ["teacher (small)", "small", "teacher (kd)", "kd"]
    small, big = record["models"]["teacher (small)"], record["models"]["teacher (kd)"]
    assert small["profile"]["params"] < big["profile"]["params"]
    for name in ("small", "kd"):
        # The run measured agreement with the variant's own teacher as it finished; the evaluation agrees.
        summary = json.loads((two_teachers_run / name / "summary.json").read_text())
        assert record["models"][name]["metrics"]["agreement"] == pytest.approx(summary["test"]["agreement"], abs=1e-6)
    plots = {m["plots"]["reliability"] for m in record["models"].values()}
    assert len(plots) == 4
