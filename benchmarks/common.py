"""Shared helpers for the benchmark scripts: build recipes, run them in-process, aggregate seeds, save JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("KDFORGE_OFFLINE", "1")
os.environ.setdefault("KDFORGE_PROGRESS", "0")

import torch

from kdforge.engine.rundir import RunDir
from kdforge.recipe import apply_overrides
from kdforge.runner import resolve
from kdforge.strategies.offline import offline
from kdforge.version import __version__

RESULTS = Path(__file__).resolve().parent / "results"
# Two benchmark processes on a 2-core machine must not both spin 2 OpenMP threads: set BENCH_THREADS=1 for each.
if os.environ.get("BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))


def commit() -> str:
    """The short hash of the checked-out commit a figure was measured at ("?" outside a git checkout)."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent, capture_output=True, text=True)
    return done.stdout.strip() or "?"


def machine() -> dict[str, Any]:
    """Where a figure was measured."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "kdforge": __version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def adamw_cosine(epochs: float) -> dict[str, Any]:
    """The training section every Fashion-MNIST benchmark uses: AdamW 2e-3, cosine, quiet logging."""
    return {
        "epochs": epochs,
        "optimizer": {"name": "adamw", "lr": 0.002},
        "schedule": {"name": "cosine"},
        "log_every": 1000,
    }


def run_recipe(tree: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate and run one recipe (no variants) in a temporary run folder; returns the public summary."""
    recipe = resolve(apply_overrides(tree, overrides or {}))
    with tempfile.TemporaryDirectory() as tmp:
        return offline(recipe, RunDir(Path(tmp) / "run")).summary


def curve(summary: dict[str, Any], split: str) -> list[float]:
    """Accuracy of ``split`` at every evaluation, in order."""
    return [rec[split]["accuracy"] for rec in summary["history"] if split in rec]


def accuracy_record(summary: dict[str, Any]) -> dict[str, float]:
    """Last-epoch, best-epoch and best-on-validation test accuracies of one run."""
    test, val = curve(summary, "test"), curve(summary, "val")
    at_best_val = test[max(range(len(val)), key=val.__getitem__)] if val else test[-1]
    return {
        "test_last": test[-1],
        "test_best": max(test),
        "test_at_best_val": at_best_val,
        "val_last": val[-1] if val else float("nan"),
        "val_best": max(val) if val else float("nan"),
        "wall_s": summary["train_wall_s"],
    }


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def load_previous(name: str) -> dict[str, Any] | None:
    """The results file written by an earlier invocation, to merge into."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def save(name: str, payload: dict[str, Any], merge_key: str | None = "students") -> Path:
    """Write ``benchmarks/results/<name>.json`` atomically, merging ``merge_key`` entries with the file's."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    previous = load_previous(name)
    if previous and merge_key and merge_key in payload:
        payload = {**payload, merge_key: {**previous.get(merge_key, {}), **payload[merge_key]}}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    tmp.replace(path)
    return path
