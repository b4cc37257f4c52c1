"""Soak test (reliability under load): many short runs back to back, and one long annotation job against faults.

Three parts, each checking that nothing accumulates (open file descriptors, threads, resident memory) and that nothing
is lost, duplicated or left behind:

1. ``inprocess``: ``--runs`` short training runs (digits, an MLP student, ce + kd from an EMA teacher, a few optimizer
   steps, ``profile: false``) back to back in this one process through ``kdforge.runner.resolve`` + ``run``. The
   process is sampled after run 10 (warm-up) and at the end; the series is kept every 10 runs.
2. ``subprocess``: the same recipe ``--runs`` times as ``kdforge run`` subprocesses: every exit code must be 0; this
   (parent) process is sampled as above, and leftover child processes (zombies) and staged temporaries under the output
   root are counted.
3. ``annotate``: one ``kdforge annotate`` job (a subprocess, method ``answer``, concurrency 8) over ``--requests``
   distinct texts against ``tests/fault_server.py``'s stub served from this process, scripted so that about 5% of the
   requests get 429 (``Retry-After: 0``), 3% get 500 and 1% sleep past the client's timeout. The job process is
   sampled every second from /proc; warm-up is the first sample with 10% of the answers in, end the last sample
   before the last answer (the backend still open; the sample after it closed is kept as ``after_close``).
   ``annotations.jsonl`` must hold ids 0..N-1 once each, every row answered with a label the server sent for that
   very text, and the request cache N answers.

Criterion for each process: end / warm-up <= 1.10 for fds, threads and RSS (fds and threads: or at most +2, stated
separately; raw numbers are kept). Writes ``benchmarks/results/soak.json`` (parts merge: ``--parts`` may run them in
separate invocations). Slow: about an hour on a loaded 2-core machine, most of it the subprocess imports.

    python benchmarks/soak.py                       # 200 runs + 200 subprocess runs + 10,000 requests
    python benchmarks/soak.py --quick               # smoke version: 10 runs, 300 requests
    python benchmarks/soak.py --parts annotate      # one part only (merged into the results file)
    python benchmarks/soak.py --parts subprocess --minutes 50   # start no subprocess run after 50 min (a loaded
                                                    # machine pays 10-50 s of imports per run); saved every 10 runs
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from common import save

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the fault-injecting stub server lives with the tests

from fault_server import FaultServer  # noqa: E402

KDFORGE = str(Path(sys.executable).with_name("kdforge"))
LABELS = ["earn", "acq", "crude", "grain"]
RATIO = 1.10
SLACK = 2  # fds / threads: a count this small may move by one or two (a lazily started helper) without a leak
# Fault mix of the annotation job (fractions of the requests the server receives) and the client settings that make
# each fault cheap to retry: Retry-After 0, 50 ms first backoff, a 3 s timeout the "sleep" faults overrun by 1.5 s.
FAULTS = {"429": 0.05, "500": 0.03, "timeout": 0.01}
CLIENT_TIMEOUT, SLEEP = 3.0, 4.5


# ---- sampling --------------------------------------------------------------------------------------------------------
def proc_stats(pid: int | str = "self") -> dict[str, Any]:
    """Open fds, OS threads and RSS (MiB) of a process, read from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
        "rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
    }


def sample_self() -> dict[str, Any]:
    """This process's stats plus Python's own thread count; collected first so that garbage is not counted."""
    gc.collect()
    return {**proc_stats(), "py_threads": threading.active_count()}


def children() -> dict[str, int]:
    """Child processes of this one still present, and how many of them are zombies (exited, never waited for)."""
    me, alive, zombies = os.getpid(), 0, 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == me:
            alive += 1
            zombies += state == "Z"
    return {"children": alive, "zombies": zombies}


def growth(warm: dict[str, Any], end: dict[str, Any], peak: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ratios end / warm-up per measure, and pass/fail per criterion (RSS: ratio; fds, threads: ratio or +SLACK)."""
    out: dict[str, Any] = {"ratios": {}, "pass": {}}
    for key in ("fds", "threads", "py_threads", "rss_mib"):
        if key not in warm:
            continue
        ratio = end[key] / warm[key] if warm[key] else float("inf")
        out["ratios"][key] = round(ratio, 4)
        out["pass"][f"{key}_ratio<=1.10"] = ratio <= RATIO
        if key != "rss_mib":
            out["pass"][f"{key}_ratio<=1.10_or_+{SLACK}"] = ratio <= RATIO or end[key] - warm[key] <= SLACK
    if peak is not None:
        out["peak_ratios"] = {k: round(peak[k] / warm[k], 4) for k in peak if warm.get(k)}
    return out


def staged(root: Path) -> list[str]:
    """Temporaries an atomic write left behind under ``root``: hidden staging folders, .tmp / .old / .partial."""
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith(".") or p.suffix in (".tmp", ".old", ".partial") or ".tmp" in p.name
    ]


# ---- parts 1 and 2: short training runs ------------------------------------------------------------------------------
def run_tree(output_dir: Path) -> dict[str, Any]:
    """A run of about a second: digits, MLP student, ce + kd from an EMA teacher, 5 optimizer steps, no profiling."""
    return {
        "name": "soak",
        "seed": 0,
        "data": {"name": "digits", "params": {"val_fraction": 0.1}, "batch_size": 64},
        "teacher": {"kind": "ema", "decay": 0.99},
        "student": {"name": "mlp", "params": {"hidden": [16]}},
        "objectives": {"ce": 0.5, "kd": {"weight": 0.5, "T": 4}},
        "train": {"epochs": 1, "max_steps": 5, "optimizer": {"name": "adamw", "lr": 0.003}, "log_every": 1000},
        "profile": False,
        "output_dir": str(output_dir),
    }


def check_run_folder(folder: Path) -> list[str]:
    """What a finished run folder lacks (summary, report, recipe, a checkpoint) or holds that it should not."""
    problems = [f"missing {n}" for n in ("summary.json", "report.md", "recipe.yaml") if not (folder / n).is_file()]
    if not (folder / "checkpoints").is_dir() or not any((folder / "checkpoints").iterdir()):
        problems.append("no checkpoint")
    problems += [f"staged leftover {s}" for s in staged(folder)]
    return problems


def soak_inprocess(runs: int, work: Path) -> dict[str, Any]:
    """``runs`` short runs back to back in this process; fds / threads / RSS after run 10 and at the end."""
    from kdforge.runner import resolve, run

    root = work / "inprocess"
    root.mkdir()
    series, problems, started = [], [], time.perf_counter()
    series.append({"run": 0, **sample_self()})
    for i in range(1, runs + 1):
        result = run(resolve(run_tree(root)))
        folder = Path(result["run_dir"])
        problems += [f"run {i}: {p}" for p in check_run_folder(folder)]
        shutil.rmtree(folder)  # checked, then gone: the disk is not what is measured
        if i % 10 == 0 or i == runs:
            series.append({"run": i, **sample_self(), "elapsed_s": round(time.perf_counter() - started, 1)})
            print(f"  inprocess {i}/{runs}: {series[-1]}", flush=True)
    warm = next(s for s in series if s["run"] >= min(10, runs))
    end = series[-1]
    left = [p.name for p in root.iterdir()]
    out = {
        "runs": runs,
        "wall_s": round(time.perf_counter() - started, 1),
        "warmup": warm,
        "end": end,
        "series": series,
        "run_problems": problems,
        "left_in_output_root": left,
        **growth(warm, end),
    }
    out["pass"]["every_run_finished_complete"] = not problems
    out["pass"]["nothing_left_in_output_root"] = not left
    return out


def soak_subprocess(
    runs: int, work: Path, minutes: float | None = None, partial: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """``runs`` ``kdforge run`` subprocesses back to back; exit codes, this process's growth, zombies, leftovers.

    Each subprocess pays PyTorch's import (seconds idle, tens of seconds on a loaded machine): ``minutes`` stops
    starting new runs after that long (recorded as ``stopped_early``), and ``partial`` gets the result so far every
    10 runs, so that a long soak killed part-way still leaves its figures.
    """
    root = work / "subprocess"
    root.mkdir()
    recipe = work / "soak-run.yaml"
    recipe.write_text(yaml.safe_dump(run_tree(root), sort_keys=False))
    env = {**os.environ, "KDFORGE_PROGRESS": "0"}
    series, codes, problems, seconds, started = [], Counter(), [], [], time.perf_counter()
    series.append({"run": 0, **sample_self(), **children()})
    done = 0
    for i in range(1, runs + 1):
        if minutes is not None and time.perf_counter() - started > minutes * 60:
            break
        t0 = time.perf_counter()
        proc = subprocess.run([KDFORGE, "run", str(recipe)], env=env, capture_output=True, text=True, check=False)
        seconds.append(time.perf_counter() - t0)
        codes[proc.returncode] += 1
        if proc.returncode != 0:
            problems.append(f"run {i}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(folders) != 1:
            problems.append(f"run {i}: {len(folders)} run folders")
        for folder in folders:
            problems += [f"run {i}: {p}" for p in check_run_folder(folder)]
            shutil.rmtree(folder)
        if i % 10 == 0 or i == runs:
            series.append({"run": i, **sample_self(), **children(), "elapsed_s": round(time.perf_counter() - started)})
            print(f"  subprocess {i}/{runs}: {series[-1]}", flush=True)
        done = i
        if partial is not None and i % 10 == 0 and i < runs:
            partial(_subprocess_result(runs, i, root, series, codes, problems, seconds, started, final=False))
    if series[-1]["run"] != done:  # stopped early between two samples
        series.append({"run": done, **sample_self(), **children(), "elapsed_s": round(time.perf_counter() - started)})
    return _subprocess_result(runs, done, root, series, codes, problems, seconds, started, final=True)


def _subprocess_result(
    runs: int,
    done: int,
    root: Path,
    series: list[dict[str, Any]],
    codes: Counter,
    problems: list[str],
    seconds: list[float],
    started: float,
    final: bool,
) -> dict[str, Any]:
    """The subprocess part's record after ``done`` of ``runs`` runs."""
    warm = next(s for s in series if s["run"] >= min(10, done))
    end = series[-1]
    left = [p.name for p in root.iterdir()]
    out = {
        "runs": runs,
        "runs_completed": done,
        "stopped_early": done < runs,
        "finished": final,
        "exit_codes": {str(k): v for k, v in codes.items()},
        "wall_s": round(time.perf_counter() - started, 1),
        "seconds_per_run": {"mean": round(sum(seconds) / len(seconds), 2), "max": round(max(seconds), 2)},
        "warmup": warm,
        "end": end,
        "series": series,
        "run_problems": problems[:50],
        "left_in_output_root": left,
        **growth(warm, end),
    }
    out["pass"]["all_exit_0"] = codes == Counter({0: done})
    out["pass"]["no_zombies_or_children_left"] = end["children"] == 0
    out["pass"]["every_run_finished_complete"] = not problems
    out["pass"]["nothing_left_in_output_root"] = not left
    return out


# ---- part 3: the annotation job --------------------------------------------------------------------------------------
def fault_script(n: int, seed: int = 0) -> list[tuple[Any, ...]]:
    """``n`` actions in a seeded random order: the FAULTS mix, the rest a label answer (a random label each)."""
    rng = random.Random(seed)
    actions: list[tuple[Any, ...]] = []
    for _ in range(n):
        u = rng.random()
        if u < FAULTS["429"]:
            actions.append(("status", 429, {"Retry-After": "0"}))
        elif u < FAULTS["429"] + FAULTS["500"]:
            actions.append(("status", 500))
        elif u < FAULTS["429"] + FAULTS["500"] + FAULTS["timeout"]:
            actions.append(("sleep", SLEEP))
        else:
            actions.append(("ok", rng.choice(LABELS)))
    return actions


def annotate_tree(srv: FaultServer, data: Path, out: Path) -> dict[str, Any]:
    """The job: method answer, 8 requests in flight, quick retries (the faults are the test, not the waiting)."""
    return {
        "name": "soak",
        "teacher": {
            "kind": "served",
            "base_urls": [srv.url],
            "model": srv.model,
            "concurrency": 8,
            "timeout": CLIENT_TIMEOUT,
            "max_retries": 6,
            "backoff": 0.05,
            "max_backoff": 0.5,
        },
        "annotate": {
            "input": {"path": str(data)},
            "labels": LABELS,
            "method": "answer",
            # Large batches: each batch waits for its slowest text (a timed-out one), so fewer batches, fewer stalls.
            "batch": 256,
        },
        "output_dir": str(out),
        "cache": str(out / "requests.sqlite"),
    }


def soak_annotate(requests: int, work: Path) -> dict[str, Any]:
    """One ``kdforge annotate`` job of ``requests`` texts against the fault server; rows, cache, growth, retries."""
    root = work / "annotate"
    root.mkdir()
    data = root / "texts.jsonl"
    texts = [f"Item {i}: the company reported quarterly results and outlook number {i * 7919 % 100003}." for i in
             range(requests)]  # fmt: skip
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    # Enough actions that the script outlasts every retry (about 1/0.91 requests per text); the default is never used.
    srv = FaultServer(fault_script(int(requests * 1.3) + 100), default=("ok", LABELS[0])).start()
    samples: list[dict[str, Any]] = []
    try:
        recipe = root / "job.yaml"
        recipe.write_text(yaml.safe_dump(annotate_tree(srv, data, root / "out"), sort_keys=False))
        env = {**os.environ, "KDFORGE_PROGRESS": "0"}
        started = time.perf_counter()
        proc = subprocess.Popen(
            [KDFORGE, "annotate", str(recipe)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        # Read the pipes from threads: a full pipe buffer would block the job (and look like a hang).
        streams: dict[str, str] = {}
        readers = [
            threading.Thread(target=lambda k=k, f=f: streams.__setitem__(k, f.read()), daemon=True)
            for k, f in (("stdout", proc.stdout), ("stderr", proc.stderr))
        ]
        for r in readers:
            r.start()
        while proc.poll() is None:
            try:
                stats = proc_stats(proc.pid)
            except (OSError, KeyError, ValueError):  # it exited between poll and read
                break
            answered = sum(1 for r in srv.calls() if r.action and r.action[0] == "ok")
            samples.append({"t": round(time.perf_counter() - started, 1), "answered": answered, **stats,
                            "server_threads": threading.active_count()})  # fmt: skip
            time.sleep(1.0)
        code = proc.wait()
        wall = time.perf_counter() - started
        for r in readers:
            r.join(timeout=10)
    finally:
        srv.stop()
    calls = srv.calls()
    sent = Counter(
        "ok" if r.action[0] == "ok" else "timeout" if r.action[0] == "sleep" else str(r.action[1])
        for r in calls
        if r.action
    )
    # Which labels the server sent for each text (a text answered twice, e.g. an "ok" that arrived after the client's
    # timeout under load, may have two): the row's label must be one of them, never another text's.
    sent_labels: dict[str, set[str]] = {}
    for r in calls:
        if r.action and r.action[0] == "ok":
            content = r.body["messages"][-1]["content"] if isinstance(r.body, dict) else ""
            text = next((t for t in _text_of(content, texts)), None)
            if text is not None:
                sent_labels.setdefault(text, set()).add(r.action[1])
    out_dir = root / "out" / "soak"
    rows = [json.loads(line) for line in (out_dir / "annotations.jsonl").read_text().splitlines()] if code == 0 else []
    ids = Counter(r["id"] for r in rows)
    lost = [i for i in range(requests) if i not in ids]
    duplicated = [i for i, c in ids.items() if c > 1]
    wrong_text = [r["id"] for r in rows if r["id"] < requests and r["text"] != texts[r["id"]]]
    crossed = [r["id"] for r in rows if r["status"] == "ok" and r["label"] not in sent_labels.get(r["text"], set())]
    statuses = Counter(r["status"] for r in rows)
    cached = None
    if (root / "out" / "requests.sqlite").is_file():
        with sqlite3.connect(root / "out" / "requests.sqlite") as con:
            cached = con.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    summary = json.loads((out_dir / "summary.json").read_text()) if code == 0 else {}
    # Warm-up: the first sample with 10% of the answers in; end: the last sample with the backend still open (before
    # the last answer came in: after it the job closes its pool and connections, which would flatter the figure).
    # The last sample of all (after close) is kept too: what the job still holds once its backend is closed.
    warm = next((s for s in samples if s["answered"] >= requests // 10), samples[0] if samples else {})
    working = [s for s in samples if s["t"] >= warm.get("t", 0) and s["answered"] < requests]
    end = working[-1] if working else (samples[-1] if samples else {})
    after = [s for s in samples if warm.get("t", 0) <= s["t"] <= end.get("t", 0)]
    peak = {k: max(s[k] for s in after) for k in ("fds", "threads", "rss_mib")} if after else None
    out = {
        "requests_asked": requests,
        "exit_code": code,
        "stderr_tail": streams.get("stderr", "")[-1000:],
        "wall_s": round(wall, 1),
        "server_requests": len(calls),
        "server_responses_by_kind": dict(sent),
        "client_usage": summary.get("usage"),
        "retries_by_kind": {k: v for k, v in sent.items() if k != "ok"},  # every fault is followed by one retry
        "script_left": srv.remaining,
        "rows": len(rows),
        "row_statuses": dict(statuses),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "wrong_text": len(wrong_text),
        "label_not_sent_for_its_text": len(crossed),
        "texts_answered_more_than_once": sum(len(v) > 1 for v in sent_labels.values()),
        "cache_answers": cached,
        "output_files": sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else [],
        "staged_leftovers": staged(root / "out"),
        "warmup": warm,
        "end": end,
        "after_close": samples[-1] if samples else {},
        "peak_after_warmup": peak,
        "samples": samples[:: max(1, len(samples) // 120)],  # about 120 points kept of one a second
        **(growth(warm, end, peak) if warm and end else {"pass": {}}),
    }
    out["pass"].update(
        {
            "exit_0": code == 0,
            "no_lost_row": code == 0 and not lost,
            "no_duplicated_row": code == 0 and not duplicated,
            "every_row_its_own_text_and_answer": code == 0 and not wrong_text and not crossed,
            "cache_holds_every_answer": cached == requests,
            "no_staged_leftovers": not out["staged_leftovers"],
        }
    )
    return out


def _text_of(content: str, texts: list[str]) -> list[str]:
    """The input text a rendered prompt carries (found by its unique 'Item N:' prefix)."""
    at = content.find("Item ")
    if at < 0:
        return []
    n = content[at + 5 :].split(":", 1)[0]
    return [texts[int(n)]] if n.isdigit() and int(n) < len(texts) and texts[int(n)] in content else []


# ---- main ------------------------------------------------------------------------------------------------------------
def main() -> None:
    """Run the chosen parts, print a summary, merge the results into benchmarks/results/soak.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="smoke version: 10 runs, 300 requests")
    parser.add_argument("--parts", default="inprocess,subprocess,annotate")
    parser.add_argument("--minutes", type=float, default=None, help="subprocess part: start no run after this long")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.requests = 10, 300
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    command = "python benchmarks/soak.py " + " ".join(sys.argv[1:])
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kdforge-soak-") as tmp:
        work = Path(tmp)
        for part in parts:
            print(f"== {part}", flush=True)
            size = args.requests if part == "annotate" else args.runs
            if part == "subprocess":

                def partial(result: dict[str, Any]) -> None:
                    save("soak", {"parts": {"subprocess": {"command": command, "quick": args.quick, **result}}},
                         merge_key="parts")  # fmt: skip

                record = soak_subprocess(size, work, args.minutes, partial)
            else:
                record = {"inprocess": soak_inprocess, "annotate": soak_annotate}[part](size, work)
            results[part] = {"command": command, "quick": args.quick, **record}
            results[part]["all_pass"] = all(results[part]["pass"].values())
            print(json.dumps({k: results[part].get(k) for k in ("pass", "ratios", "wall_s")}), flush=True)
    path = save("soak", {"criterion": f"end / warm-up <= {RATIO} (fds, threads: or +{SLACK})", "parts": results},
                merge_key="parts")  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
