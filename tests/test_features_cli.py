"""Feature, relation and cross-architecture objectives end to end through the `kdforge` console script.

Seconds-long digits runs (8×8 images): a CNN teacher teaches a smaller CNN with map, relation and module objectives,
and an MLP (the cross-architecture case) through an attention projector and OFA branches. Connectors and heads are
trained and checkpointed with the student and never exported with it. The refusals name the layer or shape at
fault before any training: a misspelt student layer even before the teacher is trained.
The processes start together when the first test asks for them (about a minute of wall time on two idle cores).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

from kdforge.export import export_run

from conftest import run_cli

DIGITS = {"name": "digits", "params": {"val_fraction": 0.1}, "batch_size": 64}
CNN_STUDENT = {"name": "cnn", "params": {"widths": [8, 16], "double": False}}
MLP_STUDENT = {"name": "mlp", "params": {"hidden": [32]}}
TRAIN = {"epochs": 3, "optimizer": {"name": "adamw", "lr": 0.01}, "log_every": 10}
ABOVE_CHANCE = 0.2  # ten balanced classes


def _teacher(cache: Path) -> dict[str, Any]:
    """A live CNN teacher trained once into a cache folder private to its run."""
    return {
        "kind": "live",
        "model": {"name": "cnn", "params": {"widths": [16, 32]}},
        "train": {"epochs": 3, "optimizer": {"name": "adamw", "lr": 0.003}},
        "cache_dir": str(cache),
    }


RUNS: dict[str, dict[str, Any]] = {
    "maps": {
        "student": CNN_STUDENT,
        "objectives": {
            "ce": 1.0,
            "hint": {"weight": 1.0, "layers": "uniform", "connector": "conv1x1"},
            "at": {"weight": 100.0, "layers": "uniform"},
            "nst": {"weight": 1.0, "layers": "last"},
        },
    },
    "relations": {
        "student": CNN_STUDENT,
        "objectives": {"ce": 1.0, "rkd": 1.0, "sp": 1.0, "pkt": 1.0, "cc": 1.0},
    },
    "modules": {
        "student": CNN_STUDENT,
        "objectives": {"ce": 1.0, "crd": 0.8, "vid": {"weight": 1.0, "layers": "last"}, "reviewkd": 1.0},
    },
    "cross": {
        "student": MLP_STUDENT,
        "objectives": {
            "ce": 1.0,
            "hint": {"weight": 1.0, "layers": "last", "connector": "attention"},
            "ofa": 1.0,
            "nd": 1.0,
        },
    },
}
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "student_layer": (
        {"student": CNN_STUDENT, "objectives": {"hint": {"layers": ["layer9 -> 2"]}}},
        "objectives.hint: Recorder: Sequential has no module 'layer9'",
    ),
    "teacher_layer": (
        {"student": CNN_STUDENT, "objectives": {"hint": {"layers": ["2 -> layer9"]}}},
        "teacher 'teacher': Recorder: Sequential has no module 'layer9'",
    ),
    "map_name": (
        {"student": CNN_STUDENT, "objectives": {"hint": {"layers": "diagonal"}}},
        "objectives.hint.layers: layers='diagonal': expected one of embedding, uniform, last, last-K, reverse",
    ),
    "shape": (
        {"student": MLP_STUDENT, "objectives": {"hint": {"layers": "last", "connector": "conv1x1"}}},
        "objectives.hint: '2' -> '13': connector 'conv1x1' needs (B, C, H, W) maps on both sides",
    ),
}


@dataclass
class Launched:
    """A CLI call started in the background: its output folder, its teacher cache and its result when it ends."""

    out: Path
    cache: Path
    future: Future[subprocess.CompletedProcess[str]]

    def result(self) -> subprocess.CompletedProcess[str]:
        return self.future.result(timeout=600)


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Launched]]:
    """Every run and refusal of this module, started together."""
    tmp = tmp_path_factory.mktemp("features")
    jobs = {**RUNS, **{f"refused-{k}": sections for k, (sections, _) in REFUSED.items()}}
    with pytest.MonkeyPatch.context() as env, ThreadPoolExecutor(max_workers=3) as pool:
        env.setenv("OMP_NUM_THREADS", "1")  # several processes share two cores
        out = {}
        for name, sections in jobs.items():
            cache, folder = tmp / f"teachers-{name}", tmp / "runs" / name
            tree = {
                "name": name,
                "seed": 0,
                "data": DIGITS,
                "teacher": _teacher(cache),
                "train": TRAIN,
                "profile": False,
                "output_dir": str(folder),
                **sections,
            }
            path = tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump(tree, sort_keys=False))
            out[name] = Launched(folder, cache, pool.submit(run_cli, "run", str(path)))
        yield out
        for job in out.values():
            job.future.cancel()


def _finished(job: Launched) -> tuple[Path, dict[str, Any]]:
    res = job.result()
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    (run_dir,) = list(job.out.iterdir())
    return run_dir, json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("name", list(RUNS))
def test_feature_objectives_train_and_their_modules_stay_out_of_the_export(
    launched: dict[str, Launched], name: str
) -> None:
    run_dir, summary = _finished(launched[name])
    assert summary["test"]["accuracy"] > ABOVE_CHANCE
    train = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in train if r.get("split") == "train"][-1]
    for term in RUNS[name]["objectives"]:
        value = last[f"term/{term}"]
        assert isinstance(value, float) and value == value, (term, value)  # logged and not NaN
    # What the automatic maps chose is written out next to the checkpoint.
    resolved = json.loads((run_dir / "objectives.json").read_text())["resolved"]
    for term, params in resolved.items():
        if "layers" in params:
            assert params["layers"] and all("->" in pair for pair in params["layers"]), (term, params["layers"])
    modules = load_file(str(run_dir / "checkpoints" / "last" / "modules.safetensors"))
    trained = {k.split("/")[0] for k in modules}
    built = {t for t in RUNS[name]["objectives"] if t in ("hint", "crd", "vid", "reviewkd", "ofa", "nd")}
    assert {f"connector.{t}" for t in built} <= trained, sorted(trained)
    (record,) = export_run(run_dir, "safetensors")  # the student alone, checked against PyTorch on test inputs
    exported = load_file(record["artifact"])
    assert exported and not any(k.startswith(("connector", "teacher")) for k in exported), sorted(exported)[:5]


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_bad_layer_map_is_refused_before_training_naming_it(launched: dict[str, Launched], name: str) -> None:
    res = launched[f"refused-{name}"].result()
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and REFUSED[name][1] in lines[0], res.stderr
    assert not list(launched[f"refused-{name}"].out.glob("*/checkpoints/*"))  # no training step was taken


def test_a_misspelt_student_layer_is_refused_before_the_teacher_is_trained(launched: dict[str, Launched]) -> None:
    job = launched["refused-student_layer"]
    assert job.result().returncode == 2
    assert not job.cache.exists() or not any(job.cache.rglob("*.safetensors"))
