"""Peak memory and time of the `files` data set on a JSONL of short texts: 10k vs 1M rows (+100k).

Each measurement runs in its own process (peak RSS is per process): a cold load (empty kdforge cache: JSON → Arrow,
tokenization) plus one epoch of batches of 256 through `make_loader`, then a warm load (cache hit) plus an epoch.
If memory scaled with rows held as Python objects, 1M rows would need gigabytes; the Arrow tables are memory-mapped.

    python benchmarks/files_memory.py [--sizes 10000 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORDS = ["the", "a", "model", "data", "teacher", "student", "learns", "from", "signal", "text", "row", "fox"]
LABELS = ["alpha", "beta", "gamma", "delta"]


def write_jsonl(path: Path, rows: int) -> None:
    """``rows`` short texts (4-12 words) with string labels, written line by line (constant memory)."""
    with open(path, "w") as f:
        for i in range(rows):
            words = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(4 + i % 9))
            f.write(json.dumps({"text": f"{words} {i}", "label": LABELS[i % 4]}) + "\n")


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_parts_mb() -> dict[str, float]:
    """Resident memory split into anonymous (heap: Python objects, tensors) and file-backed (memory-mapped Arrow
    pages and libraries, which the kernel can drop and re-read)."""
    parts = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                parts[f"{key.lower()[3:]}_mb"] = round(int(value.split()[0]) / 1024, 1)
    return parts


def peak_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(path: str) -> dict[str, Any]:
    """Load the file through `load_dataset("files", ...)` and iterate one epoch; run in a fresh process."""
    from kdforge.data import load_dataset, make_loader
    from kdforge.data.files.tokenize import STATS, load_tokenizer

    load_tokenizer("minilm")  # the tokenizer's own memory is not the data's
    before = rss_mb()
    parts_before = rss_parts_mb()
    started = time.perf_counter()
    bundle = load_dataset("files", train=path, tokenizer="minilm", val_fraction=0.0, test_fraction=0.01, max_len=64)
    load_s = time.perf_counter() - started
    after_load = rss_mb()
    parts_after_load = rss_parts_mb()
    started = time.perf_counter()
    batches = tokens = 0
    for batch in make_loader(bundle.train, 256, shuffle=True, seed=0):
        batches += 1
        tokens += int(batch["attention_mask"].sum())
    epoch_s = time.perf_counter() - started
    return {
        "rows": len(bundle.train) + len(bundle.test),
        "tokenized_rows": STATS["rows"],
        "load_s": round(load_s, 2),
        "epoch_s": round(epoch_s, 2),
        "batches": batches,
        "tokens": tokens,
        "rss_before_load_mb": round(before, 1),
        "rss_before_load": parts_before,
        "rss_after_load_mb": round(after_load, 1),
        "rss_after_load": parts_after_load,
        "rss_after_epoch_mb": round(rss_mb(), 1),
        "rss_after_epoch": rss_parts_mb(),
        "peak_rss_mb": round(peak_mb(), 1),
    }


def measure(path: Path, cache: Path) -> dict[str, Any]:
    """One fresh process over ``path`` with kdforge cache ``cache``; its JSON line."""
    env = {**os.environ, "KDFORGE_CACHE": str(cache), "KDFORGE_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path)], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise RuntimeError(f"child failed on {path}:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = round(time.perf_counter() - started, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import save

    sizes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.sizes:
            path = Path(tmp) / f"texts-{rows}.jsonl"
            write_jsonl(path, rows)
            cache = Path(tmp) / f"cache-{rows}"
            cold = measure(path, cache)
            warm = measure(path, cache)
            sizes[str(rows)] = {"file_mb": round(path.stat().st_size / 2**20, 1), "cold": cold, "warm": warm}
            print(json.dumps({rows: sizes[str(rows)]}), flush=True)
            path.unlink()
    save(
        "files_memory",
        {
            "what": "JSONL of short texts → load_dataset('files', tokenizer='minilm', max_len=64) → one epoch of "
            "batches of 256 (shuffled) through make_loader; cold = empty kdforge cache (JSON → Arrow conversion "
            "and tokenization included), warm = second process, cache hit; each in its own process",
            "sizes": sizes,
        },
        merge_key="sizes",
    )


if __name__ == "__main__":
    main()
