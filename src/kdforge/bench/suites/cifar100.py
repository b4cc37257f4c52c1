"""CIFAR-100, the field's tier-1 protocol: 240 epochs, SGD, vanilla/KD/CRD/DKD on three teacher/student pairs.

Made to run unchanged on a GPU machine holding the CIFAR-100 binary folder and the published teachers
($KDFORGE_DATA_DIR/cifar-100-binary; $KDFORGE_CIFAR100_TEACHERS/<teacher>_vanilla/ckpt_epoch_240.pth, RepDistiller's
and mdistiller's layout, read as weights only). The reference numbers are 5-seed means of best-epoch accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kdforge.bench.suite import Cell, Suite, register_suite
from kdforge.bench.suites.common import ACCURACY_COLUMNS, method_cells

EPOCHS = 240
PAIRS = {"resnet32x4->resnet8x4": ("resnet32x4", "resnet8x4"), "wrn_40_2->wrn_16_2": ("wrn_40_2", "wrn_16_2"),
         "vgg13->vgg8": ("vgg13", "vgg8")}  # fmt: skip
# KD: CE 0.1 + KD 0.9 at T 4 (mdistiller); DKD α 1, β 8, T 4, 20 warm-up epochs; CRD 16,384 negatives, 128 dims.
METHODS: dict[str, dict[str, Any]] = {
    "vanilla": {"ce": 1.0},
    "kd": {"ce": 0.1, "kd": {"weight": 0.9, "T": 4}},
    "crd": {"ce": 1.0, "crd": {"weight": 0.8, "layers": "embedding", "nce_k": 16384}},
    "dkd": {"ce": 1.0, "dkd": {"alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup_epochs": 20}},
}


def teachers_dir() -> Path:
    """Where the published teacher checkpoints are ($KDFORGE_CIFAR100_TEACHERS, else the user cache)."""
    return Path(os.environ.get("KDFORGE_CIFAR100_TEACHERS", "~/.cache/kdforge/cifar100-teachers")).expanduser()


def recipe(pair: str, method: str, seed: int) -> dict[str, Any]:
    """RepDistiller's train_student.py: SGD 0.05, momentum 0.9, wd 5e-4, batch 64, ×0.1 at 150/180/210."""
    teacher, student = PAIRS[pair]
    return {
        "name": f"bench-cifar100-{teacher}-{student}-{method}",
        "seed": seed,
        "profile": False,
        "data": {"name": "cifar100", "params": {"augment": "cifar"}, "batch_size": 64},
        "teacher": {
            "kind": "live",
            "model": {"name": teacher},
            "checkpoint": str(teachers_dir() / f"{teacher}_vanilla" / "ckpt_epoch_240.pth"),
        },
        "student": {"name": student},
        "objectives": METHODS[method],
        "train": {
            "epochs": EPOCHS,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"name": "step", "milestones": [150, 180, 210], "gamma": 0.1},
            "log_every": 100,
        },
    }


def cells() -> list[Cell]:
    """Every method on every pair."""
    return method_cells(PAIRS, METHODS, recipe)


SUITE = register_suite(
    Suite(
        name="cifar100",
        description="CIFAR-100, 240 epochs, SGD 0.05 (×0.1 at 150/180/210), batch 64, published teachers",
        cells=cells,
        columns=ACCURACY_COLUMNS,
        requires=("a GPU", "$KDFORGE_DATA_DIR/cifar-100-binary", "$KDFORGE_CIFAR100_TEACHERS"),
    )
)
