"""Reading a store that does not fit in memory: shard-local epoch order + prefetch vs plain random order.

A Fashion-MNIST store of the CNN teacher's logits and its pooled features (fp32, 1,024 rows per shard) is read three
ways for one epoch of batches, with a real student step (MLP, KD + CE) between lookups:
in memory (joined); streamed with the block-shuffled order (`store.read_window` shards at a time) and the Trainer's
prefetch of the next batch's shards; streamed in fully random order without prefetch (what a naive reader does).
Reports the median step time and the shard reads per epoch. Writes benchmarks/results/store_streaming.json.
Usage: python benchmarks/store_streaming.py [--batch 128] [--window 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch

from kdforge.data import load_dataset, make_loader
from kdforge.engine.distiller import Distiller
from kdforge.engine.trainer import with_lookahead
from kdforge.models import build_model
from kdforge.store import build_store, finalize_store, plan_store
from kdforge.strategies.cache import inspect
from kdforge.teachers import Cached, Live

from common import save

FEATURES = ["22"]  # the CNN's pooled, flattened features (160 values per image)


def epoch(cached: Cached, loader: Any, student: torch.nn.Module, prefetch: bool) -> dict[str, float]:
    """One epoch of KD steps; median step time and how many shard reads a step had to wait for."""
    distiller = Distiller(student, cached, {"ce": 0.5, "kd": {"weight": 0.5, "T": 4}})
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    times = []
    before = cached.reader.loads_on_demand
    started = time.perf_counter()
    for batch in with_lookahead(loader, cached.prefetch if prefetch else None):
        t0 = time.perf_counter()
        out = distiller(batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {
        "median_step_ms": 1000 * statistics.median(times),
        "epoch_s": time.perf_counter() - started,
        "steps": len(times),
        "shard_reads_waited_for": cached.reader.loads_on_demand - before,
    }


def main() -> None:
    """Build the store, then time one epoch per reading mode."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=1024)
    args = ap.parse_args()
    torch.manual_seed(0)
    bundle = load_dataset("fashion_mnist", seed=0)
    teacher = Live(build_model("cnn", 10, bundle.input_shape))
    with tempfile.TemporaryDirectory() as tmp:
        plan = plan_store(
            teacher.fingerprint,
            bundle.train,
            bundle.fingerprint,
            "fp32",
            {},
            args.shard_size,
            10,
            features=FEATURES,
            feature_dtype="fp32",
        )
        build_store(tmp, teacher, bundle.train, plan, batch_size=512)
        finalize_store(tmp, plan)
        info = inspect(tmp)
        template = build_model("mlp", 10, bundle.input_shape, hidden=(256,))
        modes = {
            "in_memory": ({}, None, False),
            "streamed_block_order_prefetch": ({"resident_bytes": 0}, args.shard_size, True),
            "streamed_random_order_no_prefetch": ({"resident_bytes": 0}, None, False),
        }
        results = {}
        for name, (reader_kw, block, prefetch) in modes.items():
            cached = Cached(tmp, memory_mb=0 if reader_kw else 1024)
            student = build_model("mlp", 10, bundle.input_shape, hidden=(256,))
            student.load_state_dict(template.state_dict())
            loader = make_loader(bundle.train, args.batch, True, seed=0, read_block=block, read_window=args.window)
            results[name] = epoch(cached, loader, student, prefetch)
            cached.reader.close()
            print(name, results[name])
    save(
        "store_streaming",
        {
            "store": {
                "rows": info["num_samples"],
                "shards": info["shards"],
                "size_bytes": info["size_bytes"],
                "bytes_per_sample": info["bytes_per_sample"],
                "fields": "fp32 logits (10) + fp32 features '22' (160)",
            },
            "batch": args.batch,
            "read_window": args.window,
            "lru_shards": 8,
            "modes": results,
        },
        merge_key=None,
    )


if __name__ == "__main__":
    main()
