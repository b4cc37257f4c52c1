"""Real OpenAI-compatible LLM servers on 127.0.0.1 for tests: llama.cpp's server (GGUF, returns logprobs) and
``transformers serve`` (an HF folder, returns no logprobs).

Plain functions and context managers, plus ready-made session fixtures a conftest can re-export::

    from llm_servers import llama_server, transformers_server  # noqa: F401  (in conftest.py)

    def test_x(llama_server):
        httpx.post(f"{llama_server.url}/chat/completions", json={"model": llama_server.model, ...})
        assert llama_server.requests("/v1/chat/completions") == 1

Each server runs as a child process in its own session, writes stdout + stderr (uvicorn's access log included) to
``log_path``, and is stopped with terminate -> wait -> kill -> wait, so no process outlives the test session.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# uvicorn's access log: `INFO:     127.0.0.1:40544 - "POST /v1/completions HTTP/1.1" 200 OK`
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3})')
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "KDFORGE_OFFLINE": "1"}
LLAMA_READY_S = 90.0  # ~1 s on a quiet machine; generous for a busy 2-core one
TRANSFORMERS_READY_S = 240.0  # imports + model load: ~10-20 s quiet


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running server: ``url`` is the base URL a client gets (ends in /v1), ``model`` the name to send."""

    kind: str
    process: subprocess.Popen
    port: int
    model: str
    log_path: Path
    startup_s: float = 0.0
    _log_file: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def access_log(self) -> list[tuple[str, str, int]]:
        """Every request the server handled so far, as (method, path, status), from its access log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [(m["method"], m["path"], int(m["status"])) for m in ACCESS_LINE.finditer(text)]

    def requests(self, path_substring: str = "", *, method: str | None = None, status: int | None = None) -> int:
        """How many handled requests had ``path_substring`` in their path (optionally: that method / status)."""
        return sum(
            1
            for m, p, s in self.access_log()
            if path_substring in p and (method is None or m == method) and (status is None or s == status)
        )

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server's log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (and anything it started), wait for it, kill it if it does not exit in ``timeout``."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        else:
            self.process.wait()  # reap
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_ready(server: Server, deadline_s: float) -> None:
    """Poll GET /v1/models until it answers 200; RuntimeError with the log's tail if the process dies or time is up."""
    import httpx

    start = time.monotonic()
    while True:
        if not server.alive:
            code = server.process.returncode
            server.stop()
            raise RuntimeError(
                f"{server.kind} server exited with code {code} before it was ready; log {server.log_path}:\n"
                f"{server.log_tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/models", timeout=2.0).status_code == 200:
                server.startup_s = time.monotonic() - start
                return
        if time.monotonic() - start > deadline_s:
            server.stop()
            raise RuntimeError(
                f"{server.kind} server not ready after {deadline_s:.0f} s; log {server.log_path}:\n{server.log_tail()}"
            )
        time.sleep(0.2)


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the test process dies, even by SIGKILL (no orphaned servers)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _launch(
    kind: str, cmd: list[str], *, port: int, model: str, log_path: Path, env: dict[str, str], deadline_s: float
) -> Server:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 (closed by Server.stop)
    log.write(f"$ {' '.join(cmd)}\n".encode())
    log.flush()
    process = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # stop() signals the whole group
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    server = Server(kind, process, port, model, log_path, _log_file=log)
    _wait_ready(server, deadline_s)
    return server


def _start_with_retries(
    kind: str, make: Callable[[int], tuple[list[str], dict]], port: int | None, **kw: Any
) -> Server:
    """Launch, picking a fresh port and trying again (twice) if another process took the chosen port meanwhile."""
    for attempt in range(3):
        chosen = port or free_port()
        cmd, env = make(chosen)
        try:
            return _launch(kind, cmd, port=chosen, env=env, **kw)
        except RuntimeError as e:
            if port is not None or attempt == 2 or "address already in use" not in str(e).lower():
                raise
    raise AssertionError("unreachable")


def _child_env(threads: int, **extra: str) -> dict[str, str]:
    env = {**os.environ, **OFFLINE_ENV, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    for name in ("HOST", "PORT"):  # llama_cpp.server lets these override --host / --port
        env.pop(name, None)
    env.update(extra)
    return env


def start_llama_server(
    gguf: Path,
    *,
    port: int | None = None,
    chat_format: str | None = None,
    alias: str = "smollm2",
    n_ctx: int = 2048,
    n_threads: int = 2,
    log_path: Path,
    deadline_s: float = LLAMA_READY_S,
) -> Server:
    """llama-cpp-python's OpenAI-compatible server on ``gguf``. ``chat_format`` None uses the file's own chat template
    (Gemma-3 base needs "gemma"); requests may send any ``model`` (the server answers as ``alias``)."""

    def make(p: int) -> tuple[list[str], dict]:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias]
        cmd += ["--host", "127.0.0.1", "--port", str(p), "--n_ctx", str(n_ctx)]
        cmd += ["--n_threads", str(n_threads), "--n_threads_batch", str(n_threads)]
        if chat_format:
            cmd += ["--chat_format", chat_format]
        return cmd, _child_env(n_threads)

    return _start_with_retries("llama.cpp", make, port, model=alias, log_path=log_path, deadline_s=deadline_s)


def _transformers_cli() -> list[str]:
    exe = Path(sys.executable).with_name("transformers")
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())"]


def start_transformers_server(
    folder: Path,
    *,
    port: int | None = None,
    n_threads: int = 2,
    log_path: Path,
    hf_home: Path | None = None,
    deadline_s: float = TRANSFORMERS_READY_S,
) -> Server:
    """``transformers serve FOLDER`` (the model preloaded and pinned; its name is the folder path as given). HF_HOME
    points at ``hf_home`` (default: a folder next to the log) with an empty hub/ inside, which /v1/models needs."""
    home = hf_home or log_path.with_name(log_path.stem + "-hf-home")
    (home / "hub").mkdir(parents=True, exist_ok=True)

    def make(p: int) -> tuple[list[str], dict]:
        cmd = [*_transformers_cli(), "serve", str(folder), "--host", "127.0.0.1", "--port", str(p)]
        cmd += ["--device", "cpu", "--log-level", "info"]
        return cmd, _child_env(n_threads, HF_HOME=str(home))

    return _start_with_retries("transformers", make, port, model=str(folder), log_path=log_path, deadline_s=deadline_s)


@contextlib.contextmanager
def llama_server_running(gguf: Path, **kwargs: Any) -> Iterator[Server]:
    """``start_llama_server`` as a context manager (the log goes to a temporary file unless ``log_path`` is given)."""
    with _log_default(kwargs, "llama"):
        server = start_llama_server(gguf, **kwargs)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def transformers_server_running(folder: Path, **kwargs: Any) -> Iterator[Server]:
    """``start_transformers_server`` as a context manager."""
    with _log_default(kwargs, "transformers"):
        server = start_transformers_server(folder, **kwargs)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def _log_default(kwargs: dict[str, Any], kind: str) -> Iterator[None]:
    if "log_path" not in kwargs:
        kwargs["log_path"] = Path(tempfile.mkdtemp(prefix=f"kdforge-{kind}-")) / f"{kind}.log"
    yield


# ---- pytest fixtures ----


def _need(module: str, install: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        _missing(f"{module} is not installed: `{install}` (or `make setup`)")


def _missing(why: str) -> None:
    """Skip a test whose server cannot start here; under `make test` (which installs everything) fail instead, so
    the real-server tests can never pass by being skipped."""
    if os.environ.get("KDFORGE_REQUIRE_LLM_SERVERS") == "1":
        pytest.fail(why)
    pytest.skip(why)


def _asset(get: Callable[[], Path]) -> Path:
    from kdforge.errors import ConfigError

    try:
        return get()
    except ConfigError as e:
        _missing(str(e))
        raise


def server_fixture(
    kind: str,
    *,
    name: str | None = None,
    model: Callable[[], Path] | None = None,
    scope: str = "session",
    **kwargs: Any,
):
    """A pytest fixture named ``name`` (default ``{kind}_server``) that starts one server of ``kind`` ("llama" or
    "transformers") for the whole ``scope``; ``kwargs`` go to start_llama_server / start_transformers_server.

    ``model`` returns the GGUF file (llama) or HF folder (transformers); by default SmolLM2 from kdforge.llm.assets.
    Missing packages or model files skip the tests that use the fixture, naming what to install.
    """
    if kind not in ("llama", "transformers"):
        raise ValueError(f"kind must be 'llama' or 'transformers', not {kind!r}")

    @pytest.fixture(scope=scope, name=name or f"{kind}_server")
    def _fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
        from kdforge.llm import assets

        log_dir = tmp_path_factory.mktemp(f"{kind}-server")
        if kind == "llama":
            _need("llama_cpp", 'pip install "llama-cpp-python[server]==0.3.36" torch==2.13.0')
            _need("uvicorn", 'pip install "llama-cpp-python[server]==0.3.36" torch==2.13.0')
            path = _asset(model or assets.smollm2_gguf)
            server = start_llama_server(path, log_path=log_dir / "llama.log", **kwargs)
        else:
            _need("fastapi", 'pip install "transformers[serving]" torch==2.13.0')
            _need("uvicorn", 'pip install "transformers[serving]" torch==2.13.0')
            path = _asset(model or assets.smollm2_folder)
            server = start_transformers_server(path, log_path=log_dir / "transformers.log", **kwargs)
        try:
            yield server
        finally:
            server.stop()

    return _fixture


llama_server = server_fixture("llama")
transformers_server = server_fixture("transformers")
