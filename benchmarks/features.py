"""Feature, relation and cross-architecture KD on Fashion-MNIST, 3 seeds: scratch, KD and the feature objectives.

    python benchmarks/features.py cnn mlp        # the two tables (CNN → smaller CNN, CNN → MLP)
    python benchmarks/features.py cnn:at         # one method of one table (merged into the JSON)

The teacher is the demo's CNN (trained once on the full training split, reused from the cache), run live so its
intermediate maps can be recorded. Students see the demo's 10% transfer set (5,400 images) for 10 epochs. Each
method's weights are the published defaults of mdistiller's CIFAR-100 configs where it has the method (CE 1 plus
the feature term), so no method was tuned here. Results go to benchmarks/results/features.json.
"""

from __future__ import annotations

import sys
from typing import Any

from kdforge.bench.suites.fashion_mnist import DATA

import common  # noqa: F401  (offline environment, thread count)
from common import accuracy_record, adamw_cosine, load_previous, mean_std, run_recipe, save

SEEDS = (0, 1, 2)
NAME = "features"
EPOCHS = 10

STUDENTS = {
    "cnn": {"name": "cnn", "params": {"widths": [16, 32, 64], "double": False}},
    "mlp": {"name": "mlp", "params": {"hidden": [256]}},
}

# Objectives per method: CE 1 + the method's term at mdistiller's CIFAR-100 weight; KD is the demo's setting (chosen on
# validation by benchmarks/fmnist_methods.py).
METHODS: dict[str, dict[str, Any]] = {
    "scratch": {"ce": 1.0},
    "kd": {"ce": 0.5, "kd": {"weight": 0.5, "T": 8}},
    "fitnet": {"ce": 1.0, "hint": {"weight": 100.0, "layers": "last-2", "connector": "conv1x1"}},
    "at": {"ce": 1.0, "at": {"weight": 1000.0, "layers": "uniform"}},
    "rkd": {"ce": 1.0, "rkd": {"weight": 1.0, "layers": "embedding"}},
    # nce_k 1024 instead of RepDistiller's 16,384: 16,385 bank rows × 128 floats for each of 128 samples is ~1 GB
    # gathered per contrast direction per step, too slow for a 3-seed table on a 2-core CPU.
    "crd": {"ce": 1.0, "crd": {"weight": 0.8, "layers": "embedding", "nce_k": 1024}},
    "ofa": {"ce": 1.0, "ofa": {"weight": 1.0}},
}
# A 2-D MLP feature has no spatial map: FitNet maps it onto the teacher's map through an attention projector, and
# attention transfer (a spatial attention map) does not apply.
CROSS = {
    "fitnet": {"ce": 1.0, "hint": {"weight": 100.0, "layers": "last", "connector": "attention"}},
    "at": None,
}


def tree(student: str, objectives: dict[str, Any], seed: int) -> dict[str, Any]:
    """The recipe of one cell."""
    return {
        "name": f"features-{student}",
        "seed": seed,
        "profile": False,
        "data": DATA,
        "teacher": {
            "kind": "live",
            "seed": 0,
            "model": {"name": "cnn"},
            "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.002}, "schedule": {"name": "cosine"}},
        },
        "student": STUDENTS[student],
        "objectives": objectives,
        "train": adamw_cosine(EPOCHS),
    }


def cell(student: str, method: str) -> dict[str, Any] | None:
    """One method on one student over the seeds: mean ± std of last/best test accuracy and the teacher's."""
    objectives = CROSS.get(method, METHODS[method]) if student == "mlp" else METHODS[method]
    if objectives is None:
        return None
    rows = []
    for seed in SEEDS:
        summary = run_recipe(tree(student, objectives, seed))
        record = accuracy_record(summary)
        record["teacher"] = float(summary["teacher"]["metrics"]["test"]["accuracy"])
        rows.append(record)
        print(student, method, seed, {k: round(v, 4) for k, v in record.items()}, flush=True)
    return {
        "objectives": objectives,
        **{k: {**mean_std([r[k] for r in rows]), "values": [r[k] for r in rows]} for k in rows[0]},
    }


def main(parts: list[str]) -> None:
    """Run the asked cells and merge them into the results file."""
    for part in parts:
        student, _, only = part.partition(":")
        for method in [only] if only else list(METHODS):
            result = cell(student, method)
            # Read again before writing: another invocation may have added cells meanwhile.
            tables: dict[str, Any] = (load_previous(NAME) or {}).get("tables", {})
            tables.setdefault(student, {})[method] = result if result is not None else {"not_applicable": True}
            save(NAME, {"setting": __doc__.strip().splitlines()[0], "epochs": EPOCHS, "tables": tables}, None)


if __name__ == "__main__":
    main(sys.argv[1:] or ["cnn", "mlp"])
