"""What a `kdforge` process pays before it does anything, and what lazy imports and loads save.

    .venv/bin/python benchmarks/startup.py     # → benchmarks/results/startup.json

Each pair is measured side by side, alternating, in fresh processes (median of ``--repeats``):
- importing the CLI as it is now vs with scikit-learn imported too (what every command paid before the digits
  loader imported it itself);
- a bad-input command (`kdforge run digits-kd train.optimizer.lrr=1`, exit 2) from start to its one-line error;
- an embedding teacher whose cache answers every text (built, model not loaded) vs one that loads its model (what
  a fully cached `kdforge annotate` re-run paid before the model was loaded on the first uncached text).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import commit, save

BIN = Path(sys.executable).parent
NEW_BACKEND = "from kdforge.llm.embedding import EmbeddingBackend; b = EmbeddingBackend('minilm')"
SNIPPETS = {
    "import_cli": "import kdforge.cli",
    "import_cli_with_sklearn": "import sklearn.datasets, kdforge.cli",
    "embedding_teacher_cached": NEW_BACKEND,
    "embedding_teacher_loaded": NEW_BACKEND + "; b.encoder",
}
COMMANDS = {
    **{name: [sys.executable, "-c", code] for name, code in SNIPPETS.items()},
    "bad_input_command": [str(BIN / "kdforge"), "run", "digits-kd", "train.optimizer.lrr=1", "output_dir=/tmp/x"],
}


def _seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    """Time every command ``--repeats`` times, interleaved, and save the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):  # interleaved: a burst of load on the machine hits every command alike
        for name, argv in COMMANDS.items():
            times[name].append(_seconds(argv))
    medians = {name: round(statistics.median(values), 3) for name, values in times.items()}
    payload = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit(),
        "repeats": args.repeats,
        "median_s": medians,
        "samples_s": {name: [round(v, 3) for v in values] for name, values in times.items()},
        "saved_s": {
            "sklearn_import": round(medians["import_cli_with_sklearn"] - medians["import_cli"], 3),
            "embedding_model_load": round(medians["embedding_teacher_loaded"] - medians["embedding_teacher_cached"], 3),
        },
    }
    print(save("startup", payload, merge_key=None))
    for name, value in medians.items():
        print(f"{name:28s} {value:6.2f} s")


if __name__ == "__main__":
    main()
