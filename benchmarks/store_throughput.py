"""Store build throughput vs the teacher's bare inference throughput on the same batches (I/O overhead).

Bare: the teacher's forward over the training split in batches of 256, nothing kept. Build: `build_store` with the
same batches (encode, checksum, atomic shard writes, manifest). Writes benchmarks/results/store_throughput.json.
Usage: python benchmarks/store_throughput.py [--codec fp16] [--samples 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from kdforge.data import load_dataset
from kdforge.data.base import subset
from kdforge.models import build_model
from kdforge.signals import Needs
from kdforge.store import build_store, finalize_store, plan_store
from kdforge.teachers import Live

from common import save


def main() -> None:
    """Time both passes (bare first, then the build, then bare again to bracket drift)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--codec", default="fp16")
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)
    bundle = load_dataset("fashion_mnist", seed=0)
    data = subset(bundle.train, list(range(args.samples)))
    teacher = Live(build_model("cnn", 10, bundle.input_shape))
    needs = Needs(teacher_logits=True)

    def bare() -> float:
        start = time.perf_counter()
        for b in range(0, len(data), args.batch):
            teacher.signals(data.__getitems__(list(range(b, min(b + args.batch, len(data))))), needs)
        return time.perf_counter() - start

    bare_before = bare()
    with tempfile.TemporaryDirectory() as tmp:
        plan = plan_store(teacher.fingerprint, data, bundle.fingerprint, args.codec, {}, 4096, 10)
        start = time.perf_counter()
        build_store(tmp, teacher, data, plan, batch_size=args.batch)
        finalize_store(tmp, plan)
        build = time.perf_counter() - start
    bare_after = bare()
    bare_s = min(bare_before, bare_after)
    result = {
        "samples": args.samples,
        "batch": args.batch,
        "codec": args.codec,
        "teacher": "cnn (default, 390k params)",
        "bare_inference_s": bare_s,
        "bare_runs_s": [bare_before, bare_after],
        "build_s": build,
        "bare_samples_per_s": args.samples / bare_s,
        "build_samples_per_s": args.samples / build,
        "build_over_bare_throughput": bare_s / build,
        "target": 0.9,
    }
    save("store_throughput", result, merge_key=None)
    print(f"bare {bare_s:.2f} s, build {build:.2f} s → {100 * bare_s / build:.1f}% of bare throughput")


if __name__ == "__main__":
    main()
