"""Build a digits store in its own process (the store tests kill it with SIGKILL part-way)."""

from __future__ import annotations

import sys
import time

import torch

from kdforge.data import load_dataset
from kdforge.models import build_model
from kdforge.store import build_store, finalize_store, plan_store
from kdforge.teachers import Live


def make(root: str, pause: float = 0.0) -> None:
    """Write every shard of the test store; ``pause`` seconds after each one widen the window for a kill."""
    bundle = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    teacher = Live(build_model("mlp", 10, bundle.input_shape, hidden=(32,)))
    plan = plan_store(teacher.fingerprint, bundle.train, bundle.fingerprint, "fp16", {}, 64, 10)
    build_store(root, teacher, bundle.train, plan, batch_size=32, on_shard=lambda _i: time.sleep(pause))
    finalize_store(root, plan)


if __name__ == "__main__":
    make(sys.argv[1], float(sys.argv[2]))
