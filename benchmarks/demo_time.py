"""Wall time of the default run (`kdforge run`, what `make demo` runs): with an empty teacher cache, then cached.

Writes benchmarks/results/demo_time.json. Usage: python benchmarks/demo_time.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import save


def timed_run(args: list[str]) -> tuple[float, dict]:
    """Run the console script; return its wall time and the comparison rows it wrote."""
    exe = Path(sys.executable).with_name("kdforge")
    start = time.perf_counter()
    subprocess.run([str(exe), "run", *args], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    out_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("output_dir=")))
    newest = max(out_dir.iterdir(), key=lambda p: p.stat().st_mtime)
    return seconds, json.loads((newest / "summary.json").read_text())["rows"]


def main() -> None:
    """First run trains the teacher; the second reuses it."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [f"teacher.cache_dir={tmp}/teachers", f"output_dir={tmp}/runs"]
        first_s, rows = timed_run(args)
        second_s, _ = timed_run(args)
    result = {"empty_teacher_cache_s": first_s, "cached_teacher_s": second_s, "limit_s": 300, "rows": rows}
    save("demo_time", result, merge_key=None)
    print(f"first {first_s:.0f} s, cached {second_s:.0f} s")


if __name__ == "__main__":
    main()
