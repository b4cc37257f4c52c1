"""The teaching loop on Reuters R8: student test accuracy per round for 3 rounds, the teacher adding the pool texts
nearest the student's dev errors, against a control adding the same number of random pool texts, both annotated by
the same teacher (MiniLM, zero-shot); 2 seeds.

    python llm_teach.py               # writes results/llm_teach.json
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kdforge.engine.rundir import RunDir
from kdforge.runner import resolve
from kdforge.strategies.teaching_loop import teaching_loop
from llm_common import LABELS, bench_folder, r8_files

from common import mean_std, save

SEEDS = (0, 1)
ROUNDS, PER_ROUND, SEED_SET = 3, 60, 80


def recipe(files: dict[str, Path], selection: str, seed: int, cache: Path) -> dict[str, Any]:
    """A text_bag student on the seed set; the MiniLM teacher annotates pool texts each round."""
    return {
        "name": f"teach-{selection}-{seed}",
        "seed": seed,
        "strategy": "teaching_loop",
        "data": {
            "name": "files",
            "params": {"train": str(files["seed"]), "val": str(files["dev"]), "test": str(files["test"]),
                       "labels": list(LABELS), "tokenizer": "minilm", "max_len": 128},
            "batch_size": 32,
        },
        "student": {"name": "text_bag"},
        "objectives": {"ce": 1.0},
        "train": {"epochs": 15, "optimizer": {"name": "adamw", "lr": 0.003}, "log_every": 1000},
        "profile": False,
        "teach": {
            "rounds": ROUNDS, "per_round": PER_ROUND, "source": "pool", "selection": selection,
            "pool": {"path": str(files["pool"])},
            "teacher": {"kind": "embedding", "model": "minilm", "prefix": "This article is about "},
            "labeling": {"labels": LABELS}, "stop": {"patience": ROUNDS + 1}, "cache": str(cache),
        },
    }  # fmt: skip


def main() -> None:
    work = bench_folder("llm_teach")
    files = r8_files(
        work, {"seed": ("train", SEED_SET), "pool": ("train", 2000), "dev": ("test", 400), "test": ("test", None)}
    )
    runs: dict[str, Any] = {}
    for selection in ("errors", "random"):
        per_seed = []
        for seed in SEEDS:
            shutil.rmtree(work / f"{selection}-{seed}", ignore_errors=True)  # a fresh run folder every time
            summary = teaching_loop(resolve(recipe(files, selection, seed, work / "cache.sqlite")),
                                    RunDir(work / f"{selection}-{seed}")).summary  # fmt: skip
            rounds = [
                {"round": r["round"], "train_size": r["train_size"], "dev": r["dev"],
                 "test": r["test"]["accuracy"], "dev_errors": r["dev_errors"], "added": r.get("added")}
                for r in summary["rounds"]
            ]  # fmt: skip
            per_seed.append(rounds)
            print(selection, seed, json.dumps(rounds), flush=True)
        runs[selection] = {
            "per_seed": per_seed,
            "test_by_round": [mean_std([s[r]["test"] for s in per_seed]) for r in range(ROUNDS + 1)],
            "dev_by_round": [mean_std([s[r]["dev"] for s in per_seed]) for r in range(ROUNDS + 1)],
        }
    save(
        "llm_teach",
        {
            "setup": {
                "seed_set": SEED_SET,
                "pool": 2000,
                "dev": 400,
                "rounds": ROUNDS,
                "per_round": PER_ROUND,
                "teacher": "MiniLM zero-shot (descriptions)",
                "student": "text_bag, retrained each round",
                "seeds": list(SEEDS),
            },
            "runs": runs,
        },
        merge_key=None,
    )


if __name__ == "__main__":
    main()
