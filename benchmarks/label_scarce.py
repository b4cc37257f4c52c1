"""Label-scarce Fashion-MNIST: the same student with CE on 1% of the labels vs KD on all images without labels.

The teacher (trained once on the full labelled split, as in the method benchmark) provides soft targets; the KD
student's objective reads no label at all. 3 seeds; test accuracy mean ± std at the last and the best epoch.
Usage: python benchmarks/label_scarce.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
from typing import Any

from common import accuracy_record, mean_std, run_recipe, save
from fmnist_methods import TEACHER, base

STUDENT = {"name": "mlp", "params": {"hidden": [256]}}


def recipe(seed: int, label_fraction: float, epochs: float, objectives: dict[str, Any]) -> dict[str, Any]:
    """The method benchmark's recipe (same teacher, split, optimiser); only labels, objective and budget differ."""
    setting = {"student": STUDENT, "data": {"label_fraction": label_fraction}}
    return {**base(setting, epochs, seed), "name": "label-scarce", "objectives": objectives}


SETTINGS = {
    # 540 labelled images: 100 epochs give ~500 optimizer steps, enough to fit them.
    "ce_1pct_labels": {"label_fraction": 0.01, "epochs": 100, "objectives": {"ce": 1.0}},
    # All 54,000 training images, no labels read: KD at T=4 only.
    "kd_all_images_no_labels": {"label_fraction": 1.0, "epochs": 5, "objectives": {"kd": {"weight": 1.0, "T": 4.0}}},
}


def main() -> None:
    """Run both settings for every seed and write benchmarks/results/label_scarce.json."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    out: dict[str, Any] = {"student": STUDENT, "teacher": TEACHER, "seeds": args.seeds, "settings": {}}
    for name, s in SETTINGS.items():
        runs = [
            accuracy_record(run_recipe(recipe(seed, s["label_fraction"], s["epochs"], s["objectives"])))
            for seed in args.seeds
        ]
        out["settings"][name] = {
            **s,
            "runs": runs,
            "test_last": mean_std([r["test_last"] for r in runs]),
            "test_best": mean_std([r["test_best"] for r in runs]),
        }
        t = out["settings"][name]["test_last"]
        print(f"{name}: test(last) {100 * t['mean']:.2f} ± {100 * t['std']:.2f}")
        save("label_scarce", out, merge_key=None)


if __name__ == "__main__":
    main()
