"""A process that imports kdforge once and forks a fresh child per command, so a test can SIGKILL many real runs.

Starting Python and importing PyTorch costs seconds; killing a command at twenty moments would pay it twenty times.
This server pays it once: it imports the CLI (and the modules commands load lazily) without running anything, then
for each request forks a child that runs ``kdforge.cli.main()`` with the request's arguments, kills it with SIGKILL
after ``kill_after`` seconds if asked, and reports how the child ended. The child is a real process killed by a real
signal; it starts from a state no command has touched, like a fresh ``kdforge`` process.

Protocol: one JSON object per line on stdin ({"argv", "cwd", "env", "stdout", "stderr", "kill_after"}), one JSON
object per line on stdout ({"pid", "killed", "rc", "elapsed"}). "ready" is printed once the imports are done.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import sys
import time

import torch

# Imported before any fork so children skip the cost; nothing here runs a computation (no thread pool starts).
import kdforge.cli
import kdforge.data.text
import kdforge.llm.annotate
import kdforge.llm.embedding
import kdforge.llm.generate
import kdforge.lm.sources
import kdforge.models.hf.load
import kdforge.runner
import kdforge.store
import kdforge.strategies.lm
import kdforge.strategies.teaching_loop

with contextlib.suppress(ImportError):  # the text and LM extras; their tests skip without them
    import sentence_transformers  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401


def _child(request: dict) -> None:
    """Run one command in the forked child and leave with its exit code (never return to the server loop)."""
    code = 1
    try:
        out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.chdir(request["cwd"])
        if request.get("replace_env"):
            os.environ.clear()
        os.environ.update(request.get("env") or {})
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))  # a fresh process reads it as torch starts; this one started before
        sys.stdin = open(os.devnull)  # noqa: SIM115  (the request pipe belongs to the server)
        sys.argv = ["kdforge", *request["argv"]]
        kdforge.cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # reported as a failed command, never back into the server loop
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # what a process's normal exit would run (trackers' and loggers' flushes)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve_one(request: dict) -> dict:
    """Fork, optionally SIGKILL after ``kill_after`` seconds, reap, and describe the end."""
    sys.stdout.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(request)
    kill_after = request.get("kill_after")
    killed_by_us = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if kill_after is not None and time.monotonic() - start >= kill_after:
            os.kill(pid, signal.SIGKILL)
            killed_by_us = True
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.002)
    signalled = os.WIFSIGNALED(status)
    return {
        "pid": pid,
        "killed": killed_by_us and signalled and os.WTERMSIG(status) == signal.SIGKILL,
        "rc": -os.WTERMSIG(status) if signalled else os.WEXITSTATUS(status),
        "elapsed": time.monotonic() - start,
    }


def main() -> None:
    """Serve requests until stdin closes."""
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_serve_one(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
