"""SIGKILL a command at random moments and continue it until it finishes, through the fork server.

A scenario says how to start a command in a folder of its own, how to continue it after a kill, and what its finished
result is. `kill_until_done` measures one uninterrupted run, then kills fresh runs at moments drawn uniformly over
that run's duration, continuing each after every kill, until the asked number of kills has landed; every run that
finishes must give the uninterrupted run's result.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVER = Path(__file__).with_name("fork_server.py")


@dataclass
class Ended:
    """How one attempt ended."""

    killed: bool
    rc: int
    elapsed: float
    stdout: str
    stderr: str


class ForkServer:
    """The fork server as a child of the test process (see fork_server.py)."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "KDFORGE_PROGRESS": "0"},
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().strip()
        if first != "ready":
            raise RuntimeError(f"the fork server did not start: {first!r}")
        self.count = 0

    def run(
        self,
        argv: list[str],
        cwd: Path,
        kill_after: float | None = None,
        env: dict | None = None,
        replace_env: bool = False,
    ) -> Ended:
        """Run ``kdforge *argv`` in a fresh child; SIGKILL it after ``kill_after`` seconds unless it ended before.
        ``env`` is added to the server's environment, or is the child's whole environment with ``replace_env``."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.count += 1
        out, err = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        request = {"argv": argv, "cwd": str(cwd), "env": env or {}, "stdout": str(out), "stderr": str(err)}
        request["replace_env"] = replace_env
        self.proc.stdin.write(json.dumps({**request, "kill_after": kill_after}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        # A child killed within its first milliseconds may not have opened its output files yet.
        text = [p.read_text(errors="replace") if p.exists() else "" for p in (out, err)]
        for path in (out, err):
            path.unlink(missing_ok=True)
        return Ended(reply["killed"], reply["rc"], reply["elapsed"], *text)

    def close(self) -> None:
        """Stop the server (its children have all been reaped)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@dataclass
class Scenario:
    """One command in its own folder: the first argv, the argv that continues it, and its finished result."""

    folder: Path
    start: list[str]
    resume: Callable[[], list[str] | None]  # None: the killed command had already finished
    result: Callable[[], Any]
    check_killed: Callable[[], None] = lambda: None  # what must hold right after a kill (nothing half-written)


@dataclass
class KillReport:
    """What a kill campaign did."""

    kills: int = 0
    attempts: int = 0
    finished_runs: int = 0
    moments: list[float] = field(default_factory=list)
    uninterrupted_s: float = 0.0


def kill_until_done(
    server: ForkServer,
    make: Callable[[Path], Scenario],
    root: Path,
    kills: int,
    rng: random.Random,
    same: Callable[[Any, Any], None],
    max_attempts: int = 400,
) -> KillReport:
    """Kill fresh runs of the scenario at ``kills`` random moments; each finished run must equal the reference."""
    report = KillReport()
    # Two uninterrupted runs: the first may pay one-off costs (a server's first requests, cold files), which
    # would stretch the window the kill moments are drawn from past the command's real duration.
    durations = []
    for name in ("reference", "reference-2"):
        reference = make(root / name)
        ended = server.run(reference.start, reference.folder)
        assert ended.rc == 0 and not ended.killed, f"the uninterrupted run failed: {ended.stderr[-3000:]}"
        durations.append(ended.elapsed)
        got = reference.result()
        if name == "reference":
            want = got
        else:
            same(got, want)  # uninterrupted runs agree with each other, or no comparison below means anything
    report.uninterrupted_s = min(durations)
    round_no = 0
    while report.kills < kills:
        round_no += 1
        scenario = make(root / f"round-{round_no}")
        argv = scenario.start
        while True:
            report.attempts += 1
            assert report.attempts <= max_attempts, f"no progress after {max_attempts} attempts: {report}"
            moment = rng.uniform(0.0, report.uninterrupted_s) if report.kills < kills else None
            ended = server.run(argv, scenario.folder, kill_after=moment)
            if ended.killed:
                report.kills += 1
                report.moments.append(round(moment or 0.0, 3))
                scenario.check_killed()
                resumed = scenario.resume()
                if resumed is None:  # killed after its last write: finished, nothing to continue
                    report.finished_runs += 1
                    same(scenario.result(), want)
                    break
                argv = resumed
                continue
            assert ended.rc == 0, f"attempt {report.attempts} (argv {argv}) failed: {ended.stderr[-3000:]}"
            report.finished_runs += 1
            same(scenario.result(), want)
            break
    return report
