"""Fashion-MNIST, one teacher, several students: scratch vs KD vs DKD/DIST/LSKD/WTTM over 3 seeds.

Stage 1 picks KD's (T, α) per student on a validation split carved from the training set (seed 0).
Stage 2 trains every method with 3 seeds on the same budget and reports test accuracy (mean ± std) at the
last epoch, at the best epoch (the literature's convention) and at the epoch that was best on validation.
Usage: python benchmarks/fmnist_methods.py [--epochs 5] [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

from common import accuracy_record, adamw_cosine, load_previous, mean_std, run_recipe, save

TEACHER = {
    "kind": "precomputed",
    "seed": 0,
    "model": {"name": "cnn"},
    "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.002}, "schedule": {"name": "cosine"}},
}
# Each setting: a student, the training images it may see, and its epoch budget. The teacher always saw the full
# training split; "transfer10" gives the student a 10% transfer set (Hinton et al.'s reduced-data setting).
STUDENTS = {
    "mlp64": {"student": {"name": "mlp", "params": {"hidden": [64]}}, "data": {}, "epochs": 5},
    "mlp256_transfer10": {
        "student": {"name": "mlp", "params": {"hidden": [256]}},
        "data": {"train_limit": 5400},
        "epochs": 20,
    },
    "cnn_tiny": {
        "student": {"name": "cnn", "params": {"widths": [8, 16], "double": False}},
        "data": {},
        "epochs": 5,
    },
}


def base(setting: dict[str, Any], epochs: float, seed: int) -> dict[str, Any]:
    """The shared recipe: same data split, teacher, optimiser and budget for every method."""
    return {
        "name": "bench",
        "seed": seed,
        "data": {
            "name": "fashion_mnist",
            "params": {"val_fraction": 0.1, "seed": 0, **setting["data"]},
            "batch_size": 128,
        },
        "teacher": TEACHER,
        "student": setting["student"],
        "train": adamw_cosine(epochs),
        "profile": False,
    }


def methods(T: float, alpha: float, epochs: float) -> dict[str, dict[str, Any]]:
    """Objectives per method; KD uses the (T, α) chosen on validation, the others their papers' settings."""
    return {
        "scratch": {"ce": 1.0},
        "kd": {"ce": 1 - alpha, "kd": {"weight": alpha, "T": T}},
        # DKD's 20-of-240-epoch warm-up, scaled to this budget.
        "dkd": {"ce": 1.0, "dkd": {"alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup_epochs": max(epochs / 12, 0.5)}},
        "dist": {"ce": 1.0, "dist": {"beta": 2.0, "gamma": 2.0, "T": 4.0}},
        "lskd": {"ce": 0.1, "lskd": {"weight": 9.0, "T": 2.0}},
        "wttm": {"ce": 1.0, "wttm": {"weight": 1.0, "T": 4.0}},
    }


def select_kd(student: dict[str, Any], epochs: float, grid: list[tuple[float, float]]) -> dict[str, Any]:
    """Val accuracy (seed 0) of scratch and of every (T, α); the best pair wins."""
    rows = []
    scratch = accuracy_record(run_recipe(base(student, epochs, 0), {"objectives": {"ce": 1.0}}))
    for T, alpha in grid:
        objectives = {"ce": 1 - alpha, "kd": {"weight": alpha, "T": T}}
        rec = accuracy_record(run_recipe(base(student, epochs, 0), {"objectives": objectives}))
        rows.append({"T": T, "alpha": alpha, "val_last": rec["val_last"]})
        print(f"  select T={T} alpha={alpha}: val {rec['val_last']:.4f} (scratch {scratch['val_last']:.4f})")
    best = max(rows, key=lambda r: r["val_last"])
    return {
        "scratch_val_last": scratch["val_last"],
        "grid": rows,
        "chosen": {"T": best["T"], "alpha": best["alpha"]},
    }


def main() -> None:
    """Run both stages and write benchmarks/results/fmnist_methods.json."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=None, help="override every setting's epoch budget")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--students", nargs="+", default=list(STUDENTS))
    ap.add_argument("--quick", action="store_true", help="tiny budget to check the script runs")
    ap.add_argument("--name", default=None, help="results file name (default fmnist_methods); a recheck writes apart")
    args = ap.parse_args()
    grid = list(itertools.product([4.0, 8.0], [0.5, 0.9]))
    if args.quick:
        args.epochs, args.seeds, grid = 0.05, [0], grid[:1]
    # Several invocations (one per setting, possibly in parallel) merge into one results file.
    name = args.name or ("fmnist_methods_quick" if args.quick else "fmnist_methods")
    out: dict[str, Any] = load_previous(name) or {"seeds": args.seeds, "teacher": TEACHER, "students": {}}
    for key in args.students:
        student = STUDENTS[key]
        epochs = args.epochs or student["epochs"]
        print(f"[{key}] selecting KD settings on validation ({epochs} epochs)")
        selection = select_kd(student, epochs, grid)
        T, alpha = selection["chosen"]["T"], selection["chosen"]["alpha"]
        table: dict[str, Any] = {}
        for name_, objectives in methods(T, alpha, epochs).items():
            runs = [
                accuracy_record(run_recipe(base(student, epochs, seed), {"objectives": objectives}))
                for seed in args.seeds
            ]
            table[name_] = {
                "objectives": objectives,
                "runs": runs,
                **{k: mean_std([r[k] for r in runs]) for k in ("test_last", "test_best", "test_at_best_val")},
            }
            s = table[name_]["test_last"]
            print(f"  {name_:8s} test(last) {100 * s['mean']:.2f} ± {100 * s['std']:.2f}")
        kd, scratch = table["kd"]["test_last"], table["scratch"]["test_last"]
        gain = kd["mean"] - scratch["mean"]
        out["students"][key] = {
            "setting": student,
            "epochs": epochs,
            "selection": selection,
            "methods": table,
            "kd_gain_last": gain,
            "kd_beats_scratch_beyond_spread": gain > max(kd["std"], scratch["std"]),
        }
        save(name, out)
    print(f"written benchmarks/results/{name}.json")


if __name__ == "__main__":
    main()
