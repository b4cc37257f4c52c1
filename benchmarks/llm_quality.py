"""Causal-LM distillation quality on Jane Austen: SmolLM2-135M-Instruct -> a ~7M-parameter Llama, one budget for all.

Every arm trains the same student (Llama, hidden 128, 4 layers, SmolLM2's 49,152-token vocabulary, tied embeddings,
~7.1M parameters) for the same optimiser steps on the same blocks (batch x max_len tokens per step, the data order set
by the seed), with the same AdamW learning rate, and is scored on the first ``test_limit`` blocks of the held-out
novel (Persuasion): perplexity, next-token accuracy, top-1 agreement with the teacher and KL(teacher || student) per
token. Arms: ce (labels only), forward_kl / reverse_kl / jsd (beta 0.5) / taid from a top-64 store built once by
`kdforge cache`, mixed (GKD, lambda 0.5, forward KL, live teacher: the store cannot score the student's own text),
and the store-vs-dense check: forward_kl with the live dense teacher and from a top-32 store. The training split is
cut to ``batch x steps`` blocks, so one epoch is the budget and the stores cover exactly the blocks trained on.

Results go to benchmarks/results/llm_quality.json after every run; a re-run with the same budget skips the runs
already there (a different budget starts a fresh file). Run folders live under ~/.cache/kdforge/bench/lm_quality.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/llm_quality.py --steps 300
    .venv/bin/python benchmarks/llm_quality.py --steps 8 --seeds 0 --test-limit 8   # what fitted a loaded machine
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "llm_quality.json"
OUTPUT = {"path": RESULTS}  # --results replaces it
KDFORGE = str(ROOT / ".venv" / "bin" / "kdforge")
# The same pair as `kdforge bench llm`.
from kdforge.bench.suites.llm import STUDENT, TEACHER  # noqa: E402

FKL = {"kl": {"objective": "forward_kl", "weight": 1.0}}
# arm -> (objectives, teacher source: "store64" | "store32" | "live", responses section or None)
ARMS: dict[str, tuple[dict[str, Any], str, dict[str, Any] | None]] = {
    "ce": ({"ce": 1.0}, "store64", None),
    "forward_kl": (FKL, "store64", None),
    "reverse_kl": ({"kl": {"objective": "reverse_kl", "weight": 1.0}}, "store64", None),
    "jsd": ({"kl": {"objective": "jsd", "weight": 1.0, "beta": 0.5}}, "store64", None),
    "taid": ({"kl": {"objective": "taid", "weight": 1.0}}, "store64", None),
    "forward_kl_dense_live": (FKL, "live", None),
    "forward_kl_top32": (FKL, "store32", None),
    # The top-64 store with the teacher's remaining mass compared as one outcome instead of spread uniformly.
    "forward_kl_bucket": ({"kl": {"objective": "forward_kl", "weight": 1.0, "tail": "bucket"}}, "store64", None),
    "mixed": (
        FKL,
        "live",
        {"source": "mixed", "student_fraction": 0.5, "prompt_tokens": 64, "max_new_tokens": 64},
    ),
}
# Seed 0 of every arm first, then the second seeds; the dense and top-32 arms get one seed (the check, not the table).
ONE_SEED = {"forward_kl_dense_live", "forward_kl_top32", "forward_kl_bucket"}


def log(message: str) -> None:
    """Progress on stdout with the wall time since start."""
    print(f"[{time.time() - START:7.1f}s] {message}", flush=True)


def work_dir() -> Path:
    """Where recipes, stores and run folders are kept (never inside the repository)."""
    folder = Path(os.environ.get("KDFORGE_BENCH_WORK", "~/.cache/kdforge/bench")).expanduser() / "lm_quality"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def budget_of(args: argparse.Namespace) -> dict[str, Any]:
    """The budget every arm shares (a result file with a different one is not resumed)."""
    return {
        "steps": args.steps,
        "batch_size": args.batch,
        "max_len": args.max_len,
        "tokens_per_arm": args.steps * args.batch * args.max_len,
        "train_blocks": args.steps * args.batch,
        "epochs": 1,
        "lr": args.lr,
        "test_blocks": args.test_limit,
        "test_tokens": args.test_limit * (args.max_len - 1),
    }


def store_path(k: int, args: argparse.Namespace) -> Path:
    """The top-k store of the budget's training blocks."""
    return work_dir() / f"store-top{k}-n{args.steps * args.batch}-L{args.max_len}"


def recipe(arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The recipe of one arm and seed."""
    objectives, source, responses = ARMS[arm]
    tree: dict[str, Any] = {
        "name": f"{arm}-s{seed}",
        "seed": seed,
        "output_dir": str(work_dir() / "runs" / f"{arm}-s{seed}"),
        "profile": False,
        "data": {
            "name": "austen_lm",
            "batch_size": args.batch,
            "eval_batch_size": 16,
            "params": {"max_len": args.max_len, "val_fraction": 0.0, "test_limit": args.test_limit,
                       "train_limit": args.steps * args.batch},
        },
        "student": STUDENT,
        "objectives": objectives,
        "train": {"max_steps": args.steps, "chunk_size": 1024, "eval_every": 0, "log_every": 1,
                  "optimizer": {"name": "adamw", "lr": args.lr}, "select": "last"},
    }  # fmt: skip
    if source == "live":
        tree["teacher"] = {"kind": "live", "model": TEACHER}
    else:
        k = 64 if source == "store64" else 32
        tree["teacher"] = {"kind": "cached", "model": TEACHER}
        tree["store"] = {"path": str(store_path(k, args)), "codec": "topk", "top_k": k, "batch_size": 8}
    if responses is not None:
        tree["responses"] = responses
    return tree


def write_recipe(tree: dict[str, Any], name: str) -> Path:
    """The recipe as a YAML file in the work folder."""
    path = work_dir() / "recipes" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def kdforge(*argv: str) -> float:
    """Run the kdforge CLI, its output to a log file (a stopped driver leaves it running); its wall seconds."""
    t0 = time.time()
    logfile = work_dir() / "logs" / f"{Path(argv[-1]).stem}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("w") as out:
        code = subprocess.run([KDFORGE, *argv], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0:
        tail = logfile.read_text()[-3000:]
        raise RuntimeError(f"kdforge {' '.join(argv)} failed ({code}), log {logfile}:\n{tail}")
    return time.time() - t0


def build_store(k: int, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """`kdforge cache` of the teacher's top-k over the training blocks, once."""
    key = f"top{k}"
    if key in results["stores"] and store_path(k, args).is_dir():
        return
    tree = recipe("forward_kl" if k == 64 else "forward_kl_top32", 0, args)
    wall = kdforge("cache", str(write_recipe(tree, f"cache-top{k}")))
    blocks = args.steps * args.batch
    results["stores"][key] = {"path": str(store_path(k, args)), "build_s": round(wall, 1), "blocks": blocks}
    log(f"store top-{k}: {wall:.0f}s")
    save(results)


def summary_of(folder: Path) -> dict[str, Any]:
    """The finished run's summary.json (the newest one under ``folder``)."""
    found = sorted(folder.rglob("summary.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError(f"no summary.json under {folder}")
    return json.loads(found[-1].read_text())


def finished(folder: Path, steps: int) -> dict[str, Any] | None:
    """A finished run's summary under ``folder`` when it trained this budget's steps (else None)."""
    if not folder.is_dir():
        return None
    try:
        summary = summary_of(folder)
    except RuntimeError:
        return None
    return summary if summary.get("steps") == steps and summary.get("test") else None


def figures(summary: dict[str, Any], wall: float | None, steps: int) -> dict[str, Any]:
    """The numbers one run contributes."""
    test = summary.get("test") or {}
    gen = summary.get("generation") or {}
    train_s = float(summary.get("train_wall_s") or 0.0)
    return {
        "perplexity": test.get("perplexity"),
        "nll": test.get("nll"),
        "accuracy": test.get("accuracy"),
        "agreement": test.get("agreement"),
        "kl": test.get("kl"),
        "train_wall_s": round(train_s, 1),
        "s_per_step": round(train_s / max(1, steps), 2),
        "generation": gen,
        "generation_s": gen.get("gen_s"),
        "process_wall_s": round(wall, 1) if wall is not None else None,
        "steps_done": summary.get("steps"),
    }


def teacher_perplexity(folder: Path) -> dict[str, str] | None:
    """The teacher's own test row of the run's report.md (the column titles and the printed values)."""
    for path in folder.rglob("report.md"):
        lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
        for line in lines[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells and cells[0] == "teacher":
                titles = [c.strip() for c in lines[0].strip("|").split("|")]
                return dict(zip(titles, cells, strict=False))
    return None


def mean(values: list[float | None]) -> float | None:
    """Mean of the values present."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(sum(xs) / len(xs), 4) if xs else None


def aggregate(results: dict[str, Any]) -> None:
    """Per-arm means and the store-vs-dense comparison, recomputed from the runs done so far."""
    means = {}
    for runs in results["runs"].values():
        for run in runs.values():  # files written before generation_s read the right key
            run["generation_s"] = run.get("generation_s") or (run.get("generation") or {}).get("gen_s")
    for arm, runs in results["runs"].items():
        keys = ("perplexity", "nll", "accuracy", "agreement", "kl", "train_wall_s", "s_per_step")
        means[arm] = {k: mean([r.get(k) for r in runs.values()]) for k in keys} | {"seeds": sorted(runs)}
    results["means"] = means
    dense = results["runs"].get("forward_kl_dense_live", {}).get("0")
    check: dict[str, Any] = {"dense": "forward_kl_dense_live seed 0", "note": "the same seed, steps and blocks"}
    for name, arm in (("top64", "forward_kl"), ("top32", "forward_kl_top32"), ("top64_bucket", "forward_kl_bucket")):
        run = results["runs"].get(arm, {}).get("0")
        if dense and run and dense.get("perplexity") and run.get("perplexity"):
            ratio = run["perplexity"] / dense["perplexity"]
            check[name] = {
                "perplexity": run["perplexity"],
                "dense_perplexity": dense["perplexity"],
                "perplexity_ratio": round(ratio, 4),
                "within_2pct": abs(ratio - 1) <= 0.02,
                "s_per_step": run["s_per_step"],
                "dense_s_per_step": dense["s_per_step"],
                "step_time_ratio": round(run["s_per_step"] / dense["s_per_step"], 3) if dense["s_per_step"] else None,
            }
    results["store_vs_dense"] = check


def save(results: dict[str, Any]) -> None:
    """Write the results file atomically."""
    aggregate(results)
    target = OUTPUT["path"]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(target)


def load(args: argparse.Namespace) -> dict[str, Any]:
    """The results so far when they share this budget; otherwise a fresh record."""
    budget = budget_of(args)
    if args.results.is_file():
        old = json.loads(args.results.read_text())
        if old.get("budget") == budget:
            return old
        log("results file has another budget: starting a fresh one")
    return {
        "benchmark": "causal-LM distillation quality, Austen, SmolLM2-135M-Instruct -> ~7.1M Llama",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"2 shared CPU cores (other jobs running), {platform.processor() or platform.machine()}, no GPU",
        "budget": budget,
        "teacher": {"path": TEACHER["params"]["path"], "dtype": "float32"},
        "student": STUDENT["params"]["config"],
        "arms": {a: {"objectives": o, "teacher": s, "responses": r} for a, (o, s, r) in ARMS.items()},
        "stores": {},
        "runs": {},
        "notes": [],
    }


def plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(arm, seed) in the order they run: every arm's first seed, then the rest."""
    arms = [a for a in args.arms if a in ARMS]
    order = [(a, args.seeds[0]) for a in arms]
    order += [(a, s) for s in args.seeds[1:] for a in arms if a not in ONE_SEED]
    return order


def parse() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per arm (= one epoch of the train blocks)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--test-limit", type=int, default=64, help="held-out blocks scored")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--arms", nargs="+", default=list(ARMS))
    p.add_argument("--note", action="append", default=[], help="a line recorded in the results' notes")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the results JSON goes")
    p.add_argument("--deadline-min", type=float, default=0.0, help="start no run after this many minutes (0: none)")
    return p.parse_args()


def main() -> None:
    """Build the stores, run every (arm, seed) not yet recorded, write benchmarks/results/llm_quality.json."""
    args = parse()
    OUTPUT["path"] = args.results
    results = load(args)
    results["notes"] += [n for n in args.note if n not in results["notes"]]
    for arm, seed in plan(args):
        if str(seed) in results["runs"].get(arm, {}):
            continue
        if args.deadline_min and time.time() - START > args.deadline_min * 60:
            log(f"deadline: {arm} seed {seed} not started")
            break
        source = ARMS[arm][1]
        if source.startswith("store"):
            build_store(64 if source == "store64" else 32, args, results)
        tree = recipe(arm, seed, args)
        folder = Path(tree["output_dir"])
        done = finished(folder, args.steps)
        if done is not None:  # the run finished but the driver was stopped before recording it
            run = figures(done, None, args.steps)
        else:
            wall = kdforge("run", str(write_recipe(tree, f"{arm}-s{seed}")))
            run = figures(summary_of(folder), wall, args.steps)
        results["runs"].setdefault(arm, {})[str(seed)] = run
        if results.get("teacher_test") is None:
            results["teacher_test"] = teacher_perplexity(folder)
        log(f"{arm} seed {seed}: ppl {run['perplexity']}, agreement {run['agreement']}, {run['s_per_step']} s/step")
        save(results)
    save(results)


START = time.time()

if __name__ == "__main__":
    main()
