"""Annotation throughput against llama.cpp's server (SmolLM2, one short greedy answer per text): texts/s at
concurrency 1, 4 and 16 against one server, and against two server processes behind the same job; then a re-run of
the finished job, counted at the server (it must send nothing).

    python llm_throughput.py [N]      # N texts per measurement (default 64); writes results/llm_throughput.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from kdforge.llm import assets
from kdforge.llm.annotate import annotate, load_recipe
from llm_common import CHAT_PROMPT, LABELS, bench_folder, r8_files, server

from common import save


def job(name: str, urls: list[str], model: str, data: Path, out: Path, concurrency: int) -> dict[str, Any]:
    """A greedy-answer annotate job with its own cache (each measurement starts cold)."""
    return {
        "name": name,
        "teacher": {
            "kind": "served",
            "base_urls": urls,
            "model": model,
            "concurrency": concurrency,
            "extra_body": {"repeat_penalty": 1.0},
        },
        "annotate": {
            "input": {"path": str(data)},
            "labels": LABELS,
            "method": "answer",
            "max_tokens": 4,
            "prompt": CHAT_PROMPT,
            "batch": 64,
        },
        "output_dir": str(out),
        "cache": str(out / f"{name}.sqlite"),
    }


def timed(tree: dict[str, Any], cold: bool = True) -> dict[str, Any]:
    """Run one job (``cold``: with its request cache emptied first); texts/s over its wall time."""
    if cold:
        for suffix in ("", "-wal", "-shm"):
            Path(tree["cache"] + suffix).unlink(missing_ok=True)
    started = time.perf_counter()
    summary = annotate(load_recipe(tree), show=False)
    seconds = time.perf_counter() - started
    return {"texts": summary["rows"], "seconds": round(seconds, 2), "texts_per_s": round(summary["rows"] / seconds, 2),
            "requests": summary["usage"]["requests"], "failed": summary["counts"]["failed"]}  # fmt: skip


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    work = bench_folder("llm_throughput")
    data = r8_files(work, {"texts": ("train", n)})["texts"]
    gguf = assets.smollm2_gguf()
    results: dict[str, Any] = {}
    one = server(gguf, threads=2)
    try:
        for c in (1, 4, 16):
            results[f"one server, concurrency {c}"] = timed(job(f"one-{c}", [one.url], one.model, data, work, c))
            print(c, results[f"one server, concurrency {c}"], flush=True)
        before = one.requests("/v1/chat/completions")
        rerun = timed(job("one-16", [one.url], one.model, data, work, 16), cold=False)
        results["re-run of the finished job"] = {**rerun, "requests_at_server": one.requests("/v1/chat/completions")
                                                 - before}  # fmt: skip
    finally:
        one.stop()
    # Two processes with one thread each: the same two cores, but two requests computed at once.
    two = [server(gguf, threads=1), server(gguf, threads=1)]
    try:
        for c in (4, 16):
            key = f"two servers, concurrency {c}"
            before = [s.requests("/v1/chat/completions") for s in two]
            results[key] = timed(job(f"two-{c}", [s.url for s in two], two[0].model, data, work, c))
            after = [s.requests("/v1/chat/completions") for s in two]
            results[key]["requests_per_server"] = [a - b for a, b in zip(after, before, strict=True)]
            print(key, results[key], flush=True)
    finally:
        for s in two:
            s.stop()
    save("llm_throughput", {"setup": {"texts": n, "model": "SmolLM2-135M-Instruct Q4_1 GGUF", "server":
                                      "llama-cpp-python 0.3.36", "method": "answer, max_tokens 4"},
                            "results": results}, merge_key=None)  # fmt: skip


if __name__ == "__main__":
    main()
