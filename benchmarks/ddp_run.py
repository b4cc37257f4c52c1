"""Run a recipe under torchrun / accelerate launch and report what each process saw (world size, eval size).

Usage: torchrun --nproc_per_node 2 benchmarks/ddp_run.py RECIPE OUT.json [key=value ...]
The main process writes OUT.json; the world size is asserted by the caller, never assumed.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("KDFORGE_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from kdforge import recipes
from kdforge.engine.trainer import get_accelerator
from kdforge.recipe import load_yaml
from kdforge.runner import resolve, run


def main() -> None:
    """Run the recipe; the main process records world size, test metrics and wall time."""
    recipe_name, out_path, *overrides = sys.argv[1:]
    recipe = resolve(load_yaml(recipes.find(recipe_name)), overrides)
    acc = get_accelerator(recipe.train.mixed_precision, recipe.train.grad_accum)
    result = run(recipe)
    (summary,) = result["runs"].values()
    if acc.is_main_process:
        payload = {
            "world_size": acc.num_processes,
            "env_world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "steps": summary["steps"],
            "train_wall_s": summary["train_wall_s"],
            "test": summary["test"],
            "run_dir": result["run_dir"],
        }
        with open(out_path, "w") as f:
            json.dump(payload, f, indent=2)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
