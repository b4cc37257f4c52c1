"""Shared test set-up: offline, no progress bars, a private teacher cache, small helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
def teacher_cache(tmp_path: Path) -> str:
    """A teacher cache folder private to one test."""
    return str(tmp_path / "teachers")
