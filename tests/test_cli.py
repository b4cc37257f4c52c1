"""End-to-end through the installed `kdforge` console script, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_objectives_json_lists_every_objective_with_parameters():
    res = run_cli("objectives", "--json")
    assert res.returncode == 0, res.stderr
    items = {item["name"]: item for item in json.loads(res.stdout)}
    expected = {"ce", "kd", "dkd", "ttm", "wttm", "dist", "lskd", "pskd", "reverse_kl", "jsd", "tv"}
    assert expected <= set(items)
    assert items["kd"]["params"]["T"]["default"] == 4.0
    assert items["dkd"]["params"]["beta"]["default"] == 8.0
    assert run_cli("objectives").returncode == 0


def test_recipes_json_lists_builtin_recipes():
    res = run_cli("recipes", "--json")
    assert res.returncode == 0, res.stderr
    names = [item["name"] for item in json.loads(res.stdout)]
    assert "fmnist-demo" in names and "digits-kd" in names


def test_run_then_eval_digits(tmp_path: Path, teacher_cache: str):
    res = run_cli("run", "digits-kd", f"output_dir={tmp_path / 'runs'}", f"teacher.cache_dir={teacher_cache}")
    assert res.returncode == 0, res.stderr
    assert "teacher" in res.stdout and "digits-kd" in res.stdout
    (run_dir,) = list((tmp_path / "runs").iterdir())
    for name in ("recipe.yaml", "metrics.jsonl", "report.md", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "last" / "model.safetensors").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.8 and "agreement" in summary["test"]
    assert "| teacher |" in (run_dir / "report.md").read_text()
    again = run_cli("eval", str(run_dir))
    assert again.returncode == 0, again.stderr
    evaluated = json.loads((run_dir / "eval-last.json").read_text())["rows"]
    assert evaluated[-1]["accuracy"] == pytest.approx(summary["test"]["accuracy"])


def test_default_run_is_the_fashion_mnist_demo(tmp_path: Path, teacher_cache: str):
    pytest.importorskip("kdforge.data.fashion_mnist")
    from kdforge.data.fashion_mnist import locate

    try:
        locate(None)
    except Exception:
        pytest.skip("Fashion-MNIST files are not installed (run `make data`)")
    res = run_cli(
        "run",
        f"output_dir={tmp_path / 'runs'}",
        f"teacher.cache_dir={teacher_cache}",
        "data.params.train_limit=3000",
        "teacher.model.params={widths: [8, 16]}",
        "teacher.train.epochs=0.3",  # the teacher trains on the full split: a third of an epoch is >50% accurate
        "train.epochs=2",
        "profile=false",  # latency profiles of three models are the eval tests' business, not the default run's
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    for name in ("teacher", "scratch", "kd"):
        assert name in res.stdout
    (run_dir,) = list((tmp_path / "runs").iterdir())
    rows = json.loads((run_dir / "summary.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["teacher", "scratch", "kd"]
    assert all(r["accuracy"] > 0.3 for r in rows), rows  # 10 classes: chance is 0.1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["digits-kd", "train.optimizer.lrr=1"], "train.optimizer.lrr: unknown key"),
        (["digits-kd", "objectives={kdd: 1}"], "unknown objective 'kdd'"),
        (["digits-kd", "student.name=resnet9"], "student.name: unknown model 'resnet9'"),
        (["no-such-recipe"], "Built-in: "),
        (["fmnist-demo", "data.params.root=/nonexistent/fm"], "apt-get"),
        (["digits-kd", "teacher.checkpoint=/nonexistent/t.safetensors"], "teacher.checkpoint"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path: Path, args: list[str], message: str):
    res = run_cli("run", *args, f"output_dir={tmp_path}")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in " ".join(res.stderr.split()), res.stderr
    assert "Traceback" not in res.stderr


def test_mixed_precision_bf16_runs_on_cpu(tmp_path: Path, teacher_cache: str):
    res = run_cli(
        "run",
        "digits-kd",
        "train.mixed_precision=bf16",
        f"output_dir={tmp_path / 'r'}",
        f"teacher.cache_dir={teacher_cache}",
    )
    assert res.returncode == 0, res.stderr
    (run_dir,) = list((tmp_path / "r").iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["test"]["accuracy"] > 0.7


def test_eval_of_a_non_run_folder_exits_2(tmp_path: Path):
    res = run_cli("eval", str(tmp_path))
    assert res.returncode == 2 and "not a run folder" in res.stderr
