"""The same recipe on 1 process and on 2 processes (torchrun, gloo on CPU): world size, accuracy, wall time.

Writes benchmarks/results/ddp.json. Usage: python benchmarks/ddp_compare.py [key=value overrides for fmnist-demo]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import save

HERE = Path(__file__).resolve().parent
DEFAULT = ["variants={}", "data.params.train_limit=null", "train.epochs=2", "profile=false"]


def launch(nproc: int, out: Path, overrides: list[str]) -> dict:
    """Run benchmarks/ddp_run.py with ``nproc`` processes and return what the main process recorded."""
    script = [str(HERE / "ddp_run.py"), "fmnist-demo", str(out), *overrides]
    if nproc == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(nproc), *script]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc))}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(res.stderr[-4000:])
    return json.loads(out.read_text())


def main() -> None:
    """Both runs, the checks, the JSON."""
    overrides = DEFAULT + sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        overrides_run = [*overrides, f"output_dir={tmp}/runs"]
        one = launch(1, Path(tmp) / "one.json", overrides_run)
        two = launch(2, Path(tmp) / "two.json", overrides_run)
    assert two["world_size"] == 2, "torchrun did not give 2 processes"
    gap = abs(two["test"]["accuracy"] - one["test"]["accuracy"])
    result = {
        "recipe": "fmnist-demo (kd variant)",
        "overrides": overrides,
        "one_process": one,
        "two_processes": two,
        "accuracy_gap_points": 100 * gap,
        "within_1_point": gap <= 0.01,
    }
    print(json.dumps({k: result[k] for k in ("accuracy_gap_points", "within_1_point")}))
    print(
        f"1 proc {one['test']['accuracy']:.4f} ({one['train_wall_s']} s), 2 procs {two['test']['accuracy']:.4f} "
        f"({two['train_wall_s']} s)"
    )
    save("ddp", result, merge_key=None)


if __name__ == "__main__":
    main()
