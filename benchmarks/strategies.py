"""Teaching strategies on Fashion-MNIST and Reuters R8, 3 seeds each: does each strategy do what its paper says?

    python benchmarks/strategies.py mutual born_again assistant ensemble mean_teacher r8 step_time

Each part runs the strategy from its built-in recipe (src/kdforge/recipes/fmnist-*.yaml) with the budget below and
the baseline it must beat, seeds 0-2, and merges its figures into benchmarks/results/strategies.json.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from kdforge.data.recipe_data import load_data
from kdforge.engine.rundir import RunDir
from kdforge.recipe import apply_overrides, load_yaml
from kdforge.recipes import builtin
from kdforge.registry import STRATEGIES
from kdforge.runner import resolve
from llm_common import LABELS, r8_files

import common  # noqa: F401  (offline environment, thread count)
from common import mean_std, save

SEEDS = (0, 1, 2)
NAME = "strategies"


def recipe(name: str, **overrides: Any) -> dict[str, Any]:
    """A built-in recipe with dotted overrides (quiet logging, no profiling)."""
    tree = load_yaml(builtin()[name])
    tree = apply_overrides(tree, {"profile": False, "train.log_every": 100000, **overrides})
    return tree


def run(tree: dict[str, Any]) -> dict[str, Any]:
    """Validate and run a recipe with its strategy in a temporary folder; the public summary."""
    resolved = resolve(tree)
    with tempfile.TemporaryDirectory() as tmp:
        return STRATEGIES.get(resolved.strategy.name)(resolved, RunDir(Path(tmp) / "run")).summary


def acc(summary_test: dict[str, Any] | None) -> float:
    """Test accuracy of a summary's test record."""
    assert summary_test is not None
    return float(summary_test["accuracy"])


def stats(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Mean ± std of every key over the seeds, and the per-seed values."""
    return {key: {**mean_std([r[key] for r in rows]), "values": [r[key] for r in rows]} for key in rows[0]}


def part_mutual() -> dict[str, Any]:
    """Two MLP students trained together vs each trained alone (same architecture, same initial weights)."""
    rows = []
    for seed in SEEDS:
        together = run(recipe("fmnist-mutual", seed=seed))
        row = {f"mutual_{n}": acc(s["test"]) for n, s in together["students"].items()}
        for i in (0, 1):
            # Student i of the mutual run starts from seed + i: the same initial weights alone.
            alone = run(recipe("fmnist-mutual", seed=seed + i, strategy="offline"))
            row[f"alone_s{i}"] = acc(alone["test"])
        row["mutual_ensemble"] = together["ensemble_test_accuracy"]
        row["step_s_mutual"] = together["train_wall_s"] / together["steps"]
        rows.append(row)
        print("mutual", seed, row, flush=True)
    return {"setting": "fmnist-mutual: 2 x mlp[256], CE (+ peer KL at T=1), 1,000 images, 30 epochs", **stats(rows)}


def part_born_again() -> dict[str, Any]:
    """Generations 0-2 of one MLP (CE + KD from the previous generation)."""
    rows = []
    for seed in SEEDS:
        out = run(recipe("fmnist-born-again", seed=seed))
        row = {stage["name"]: acc(stage["test"]) for stage in out["stages"]}
        row["ensemble_of_generations"] = out["generations_ensemble_test_accuracy"]
        rows.append(row)
        print("born_again", seed, row, flush=True)
    cwtm = []
    for seed in SEEDS:
        out = run(recipe("fmnist-born-again", seed=seed, objectives={"cwtm": 1.0}, **{"strategy.generations": 1}))
        cwtm.append({stage["name"]: acc(stage["test"]) for stage in out["stages"]})
    return {
        "setting": "fmnist-born-again: mlp[256], gen 0 CE, gens 1-2 0.5 CE + 0.5 KD(T=4), 5,400 images, 10 epochs",
        **stats(rows),
        "cwtm": stats(cwtm),
    }


def part_assistant() -> dict[str, Any]:
    """CNN teacher → mlp[8] student, directly and through an mlp[256] assistant."""
    rows = []
    for seed in SEEDS:
        chain = run(recipe("fmnist-assistant", seed=seed))
        direct = run(recipe("fmnist-assistant", seed=seed, strategy="offline"))
        row = {"assistant": acc(chain["stages"][0]["test"]), "via_assistant": acc(chain["test"])}
        row["direct_kd"] = acc(direct["test"])
        rows.append(row)
        print("assistant", seed, row, flush=True)
    return {
        "setting": "fmnist-assistant: CNN teacher, mlp[256] assistant, mlp[8] student, 10 epochs each",
        **stats(rows),
    }


def part_ensemble() -> dict[str, Any]:
    """A student of the 3-CNN ensemble vs a student of the best single CNN (same budget)."""
    base = recipe("fmnist-ensemble")
    members = base["teacher"]["members"]
    singles = []
    for member in members:
        tree = recipe("fmnist-ensemble", strategy="offline", teacher={"kind": "live", **member})
        singles.append(run(apply_overrides(tree, {"train.epochs": 0.01}))["teacher"]["metrics"]["test"]["accuracy"])
    best = max(range(len(members)), key=singles.__getitem__)
    teachers = _ensemble_accuracy(base)
    rows = []
    for seed in SEEDS:
        ensemble = run(recipe("fmnist-ensemble", seed=seed))
        single = run(
            recipe("fmnist-ensemble", seed=seed, strategy="offline", teacher={"kind": "live", **members[best]})
        )
        row = {"student_of_ensemble": acc(ensemble["test"]), "student_of_best_single": acc(single["test"])}
        rows.append(row)
        print("ensemble", seed, row, flush=True)
    return {
        "setting": "fmnist-ensemble: 3 CNNs (seeds 0-2) averaged, mlp[256] student, 5,400 images, 10 epochs",
        "teacher_test_accuracy": {"members": singles, "best_member": best, "ensemble_mean": teachers},
        **stats(rows),
    }


def part_ensemble_cnn() -> dict[str, Any]:
    """The same teachers with a student that can take more from a better teacher: a small CNN."""
    student = {"name": "cnn", "params": {"widths": [16, 32, 64]}}
    members = recipe("fmnist-ensemble")["teacher"]["members"]
    best = max(range(len(members)), key=lambda k: _member_accuracy(members[k]))
    rows = []
    for seed in SEEDS:
        ensemble = run(recipe("fmnist-ensemble", seed=seed, student=student))
        teacher = {"kind": "live", **members[best]}
        single = run(recipe("fmnist-ensemble", seed=seed, strategy="offline", teacher=teacher, student=student))
        row = {"student_of_ensemble": acc(ensemble["test"]), "student_of_best_single": acc(single["test"])}
        rows.append(row)
        print("ensemble_cnn", seed, row, flush=True)
    return {"setting": "fmnist-ensemble with a cnn[16,32,64] student, 5,400 images, 10 epochs", **stats(rows)}


def _member_accuracy(member: dict[str, Any]) -> float:
    """A member's test accuracy, from the teacher cache (trained there once)."""
    tree = recipe("fmnist-ensemble", strategy="offline", teacher={"kind": "live", **member})
    return run(apply_overrides(tree, {"train.epochs": 0.01}))["teacher"]["metrics"]["test"]["accuracy"]


def _ensemble_accuracy(tree: dict[str, Any]) -> float:
    """Test accuracy of the ensemble teacher's mean probabilities."""
    from kdforge.strategies.common import ensemble_accuracy
    from kdforge.strategies.provision import loaders, provide_teacher

    resolved = resolve(tree)
    bundle = load_data(resolved)
    teacher, _ = provide_teacher(resolved, bundle)
    _, evals = loaders(resolved, bundle)
    models = [member.model for member in teacher.members]
    return ensemble_accuracy(models, evals["test"], torch.device("cpu"))


def semi_pair(tree: dict[str, Any], fraction: float, supervised_batch: int) -> dict[str, float]:
    """Mean teacher vs supervised training on the very same labelled subset, same optimizer steps and batch."""
    mt = run(apply_overrides(tree, {"strategy.labelled_fraction": fraction}))
    steps = mt["steps"]
    sup_tree = copy.deepcopy(tree)
    sup_tree["strategy"] = "offline"
    sup_tree = apply_overrides(
        sup_tree,
        {
            "data.params.label_fraction": fraction,
            "data.batch_size": supervised_batch,
            "train.epochs": 100000,
            "train.max_steps": steps,
        },
    )
    sup = run(sup_tree)
    return {
        "mean_teacher": acc(mt["test"]),
        "mean_teacher_ema": float(mt["teacher_test"]["accuracy"]),
        "supervised": acc(sup["test"]),
        "steps": float(steps),
        "labelled": float(mt["semi"]["labelled"]),
    }


def part_mean_teacher() -> dict[str, Any]:
    """Fashion-MNIST with 1% and 10% of the labels: mean teacher vs supervised on the labelled subset alone."""
    out: dict[str, Any] = {}
    for fraction in (0.01, 0.1):
        rows = []
        for seed in SEEDS:
            # The supervised baseline sees the labelled samples as the mean teacher's labelled rows do (weak: none).
            row = semi_pair(recipe("fmnist-mean-teacher", seed=seed), fraction, 32)
            rows.append(row)
            print("mean_teacher", fraction, seed, row, flush=True)
        out[f"labels_{fraction:g}"] = stats(rows)
    setting = (
        "fmnist-mean-teacher: mlp[256], 32 labelled + 224 unlabeled per batch, weak none, strong flip_crop, 10 epochs"
    )
    return {"setting": setting, **out}


def part_r8() -> dict[str, Any]:
    """Reuters R8 from files with 5% of the labels: mean teacher vs supervised on the labelled subset."""
    work = Path(tempfile.mkdtemp(prefix="kdforge-r8-"))
    files = r8_files(work, {"train": ("train", None), "test": ("test", None)})
    rows = []
    for seed in SEEDS:
        tree = {
            "name": "r8-mean-teacher",
            "seed": seed,
            "strategy": {
                "name": "mean_teacher",
                "labelled_fraction": 0.05,
                "labelled_batch": 16,
                "unlabelled_batch": 112,
                "threshold": 0.9,
                "weak": "none",
                "strong": "token_mask",
            },
            "data": {
                "name": "files",
                "params": {"train": str(files["train"]), "test": str(files["test"]), "labels": list(LABELS),
                           "tokenizer": "minilm", "max_len": 128, "val_fraction": 0.0, "label_column": "label"},
                "batch_size": 128,
            },
            "student": {"name": "text_bag"},
            "objectives": {"ce": 1.0},
            "train": {"epochs": 10, "optimizer": {"name": "adamw", "lr": 0.003}, "log_every": 100000},
            "profile": False,
        }  # fmt: skip
        row = semi_pair(tree, 0.05, 16)
        rows.append(row)
        print("r8", seed, row, flush=True)
    setting = (
        "R8 files, text_bag, 5% labels, 16 labelled + 112 unlabeled per batch, weak none, strong token_mask, 10 epochs"
    )
    return {"setting": setting, **stats(rows)}


PARTS = {
    "mutual": part_mutual,
    "born_again": part_born_again,
    "assistant": part_assistant,
    "ensemble": part_ensemble,
    "ensemble_cnn": part_ensemble_cnn,
    "mean_teacher": part_mean_teacher,
    "r8": part_r8,
}


def main() -> None:
    """Run the named parts (all by default) and merge them into benchmarks/results/strategies.json."""
    names = sys.argv[1:] or [*PARTS, "step_time"]
    for name in names:
        started = time.perf_counter()
        if name == "step_time":
            from strategy_steps import measure

            payload = measure()
        else:
            payload = PARTS[name]()
        payload["wall_s"] = round(time.perf_counter() - started, 1)
        save(NAME, {"parts": {name: payload}}, merge_key="parts")
        print(f"{name}: saved in {payload['wall_s']} s", flush=True)


if __name__ == "__main__":
    main()
