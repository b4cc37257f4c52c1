"""Shard file format: safetensors vs Arrow IPC vs Parquet for the same store shards (write, read, random batch).

Data: dense fp16 logits (Fashion-MNIST-sized, 54,000 x 10) and top-k records (4,096 tokens x k=128, ids int16 +
fp16 log-probs), split into shards. Times are medians of 5 repeats. Writes benchmarks/results/shard_format.json.
Usage: python benchmarks/shard_format.py   (needs pyarrow: `pip install pyarrow`)
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import torch
from safetensors.numpy import load_file, save_file

from common import save


def median_s(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median wall seconds of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def to_table(arrays: dict[str, np.ndarray]) -> pa.Table:
    """Rows of fixed-size lists, the natural Arrow layout for (N, ...) tensors."""
    cols = {}
    for name, a in arrays.items():
        flat = a.reshape(len(a), -1)
        cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    return pa.table(cols)


def from_table(table: pa.Table, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Back to numpy arrays of the original shapes."""
    return {
        name: table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, *shape)
        for name, shape in shapes.items()
    }


def bench(label: str, shards: list[dict[str, np.ndarray]], folder: Path) -> dict[str, dict[str, float]]:
    """Write/read/sample times and bytes for each format."""
    shapes = {k: v.shape[1:] for k, v in shards[0].items()}
    formats = {
        "safetensors": (
            lambda p, a: save_file(a, str(p)),
            lambda p: load_file(str(p)),
        ),
        "arrow_ipc": (
            lambda p, a: feather.write_feather(to_table(a), str(p), compression="uncompressed"),
            lambda p: from_table(feather.read_table(str(p), memory_map=True), shapes),
        ),
        "parquet": (
            lambda p, a: pq.write_table(to_table(a), str(p), compression="none"),
            lambda p: from_table(pq.read_table(str(p)), shapes),
        ),
    }
    out = {}
    rng = np.random.default_rng(0)
    for name, (write, read) in formats.items():
        paths = [folder / f"{label}-{name}-{i}" for i in range(len(shards))]
        write_s = median_s(lambda w=write, ps=paths: [w(p, a) for p, a in zip(ps, shards, strict=True)])
        read_s = median_s(lambda r=read, ps=paths: [r(p) for p in ps])
        first = read(paths[0])
        picks = rng.integers(0, len(shards[0][next(iter(shapes))]), size=128)
        batch_s = median_s(lambda sh=first, ix=picks: {k: v[ix] for k, v in sh.items()}, repeats=20)
        out[name] = {
            "write_s": write_s,
            "read_all_s": read_s,
            "batch_gather_ms": 1000 * batch_s,
            "bytes": sum(p.stat().st_size for p in paths),
        }
    return out


def main() -> None:
    """Both workloads, all formats."""
    torch.manual_seed(0)
    dense = torch.randn(54000, 10).half().numpy()
    ids = torch.randint(0, 49152, (4096, 128)).to(torch.int16).numpy()
    lp = torch.randn(4096, 128).half().numpy()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dense_shards = [{"logits": dense[i : i + 4096]} for i in range(0, len(dense), 4096)]
        topk_shards = [{"ids": ids[i : i + 1024], "logprobs": lp[i : i + 1024]} for i in range(0, 4096, 1024)]
        result = {
            "dense_fp16_54000x10": bench("dense", dense_shards, folder),
            "topk128_4096_tokens": bench("topk", topk_shards, folder),
            "choice": "safetensors",
        }
    save("shard_format", result, merge_key=None)
    for workload, table in result.items():
        if isinstance(table, dict):
            for fmt, v in table.items():
                print(workload, fmt, {k: round(x, 4) for k, x in v.items()})


if __name__ == "__main__":
    main()
