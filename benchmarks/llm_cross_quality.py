"""Cross-tokenizer distillation: Gemma-3-270M (262,144 tokens) → a ~7.1M Llama with SmolLM2's 49,152-token vocabulary.

Both arms train the student of benchmarks/llm_quality.py on the same Austen blocks (SmolLM2 tokens; the seed sets
their order), same steps, learning rate and held-out blocks (Persuasion):

* ``ce``: next-token cross-entropy only;
* ``cross``: 0.5·CE + 0.5·forward KL to Gemma's next-token distribution, which a live CrossTokenizerTeacher reads in
  Gemma's own tokens and maps onto SmolLM2's vocabulary at the positions where both tokenizations end at the same
  character (the rest get the CE term only).

Reported: held-out perplexity and next-token accuracy of both, the share of student positions that got a teacher
target, the mean teacher mass dropped there (Gemma tokens SmolLM2 lacks), and the shared-token fraction. Gemma runs
live on CPU (a store cannot hold another tokenizer's targets), which sets the budget: see ``--steps``.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/llm_cross_quality.py --steps 50 --seeds 0 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import llm_quality as lq  # the same student, runner and result helpers

RESULTS = lq.ROOT / "benchmarks" / "results" / "llm_cross_quality.json"
GEMMA = "~/.cache/kdforge/llm/gemma-3-270m"
ARMS = {
    "ce": {"ce": 1.0},
    "cross": {"kl": {"objective": "forward_kl", "weight": 0.5}, "ce": 0.5},
}


def recipe(arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The recipe of one arm and seed (the cross arm adds the Gemma teacher)."""
    tree: dict[str, Any] = {
        "name": f"cross-{arm}-s{seed}",
        "seed": seed,
        "output_dir": str(lq.work_dir() / "runs" / f"cross-{arm}-s{seed}"),
        "profile": False,
        "data": {
            "name": "austen_lm",
            "batch_size": args.batch,
            "eval_batch_size": 16,
            "params": {"max_len": args.max_len, "val_fraction": 0.0, "test_limit": args.test_limit,
                       "train_limit": args.steps * args.batch},
        },
        "student": lq.STUDENT,
        "objectives": ARMS[arm],
        "train": {"max_steps": args.steps, "chunk_size": 1024, "eval_every": 0, "log_every": 1,
                  "optimizer": {"name": "adamw", "lr": args.lr}, "select": "last"},
    }  # fmt: skip
    if arm == "cross":
        tree["teacher"] = {"kind": "live", "model": {"name": "hf", "params": {"path": GEMMA, "task": "causal_lm"}}}
    return tree


def parse() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--test-limit", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--note", action="append", default=[])
    return p.parse_args()


def main() -> None:
    """Run every (arm, seed) not yet recorded and write benchmarks/results/llm_cross_quality.json."""
    args = parse()
    budget = {"steps": args.steps, "batch_size": args.batch, "max_len": args.max_len, "lr": args.lr,
              "tokens_per_arm": args.steps * args.batch * args.max_len, "test_blocks": args.test_limit}  # fmt: skip
    results: dict[str, Any] = {}
    if RESULTS.is_file():
        results = json.loads(RESULTS.read_text())
    if results.get("budget") != budget:
        results = {
            "benchmark": "cross-tokenizer distillation, Austen, Gemma-3-270M -> ~7.1M Llama with SmolLM2's tokenizer",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"2 shared CPU cores, {platform.processor() or platform.machine()}, no GPU",
            "budget": budget,
            "teacher": {"path": GEMMA, "note": "fp32 folder converted from the Q4_K_M GGUF", "run": "live, float32"},
            "student": lq.STUDENT["params"]["config"],
            "arms": ARMS,
            "runs": {},
            "notes": [],
        }
    results["notes"] += [n for n in args.note if n not in results["notes"]]
    for seed in args.seeds:
        for arm in ARMS:
            if str(seed) in results["runs"].get(arm, {}):
                continue
            tree = recipe(arm, seed, args)
            folder = Path(tree["output_dir"])
            done = lq.finished(folder, args.steps)
            wall = None if done is not None else lq.kdforge("run", str(lq.write_recipe(tree, f"cross-{arm}-s{seed}")))
            summary = done if done is not None else lq.summary_of(folder)
            run = lq.figures(summary, wall, args.steps)
            run["vocabulary"] = summary.get("vocabulary")
            results["runs"].setdefault(arm, {})[str(seed)] = run
            lq.log(f"{arm} seed {seed}: ppl {run['perplexity']}, {run['s_per_step']} s/step")
            means = {a: {k: lq.mean([r.get(k) for r in rs.values()]) for k in ("perplexity", "accuracy", "s_per_step")}
                     for a, rs in results["runs"].items()}  # fmt: skip
            results["means"] = means
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    lq.log("done")


if __name__ == "__main__":
    lq.START = time.time()
    main()
