"""Images from your own folders through the `files` data set, against the built-in Fashion-MNIST loader.

The first --train / --test Fashion-MNIST images (the built-in loader's raw arrays) are written twice: as IDX files that
the built-in `fashion_mnist` data set reads (`root=`), and as PNG folders (train/<class>/*.png, test/<class>/*.png)
for `files`. The same student (mlp hidden [256], CE, 5 epochs, AdamW) is trained from each with seeds 0 and 1; test
accuracies must agree within noise. Loader throughput: images/s over one shuffled epoch of the training split in
batches of 128 through `kdforge.data.make_loader`, median of 3, both loaders measured in turn in this process.
Writes benchmarks/results/files_images.json (about 3 min).
Usage: python benchmarks/files_images.py [--train 10000] [--test 2000] [--epochs 5] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import statistics
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kdforge.data import make_loader
from kdforge.data.fashion_mnist import CLASS_NAMES, FILES, locate
from kdforge.data.idx import read_idx
from kdforge.data.recipe_data import load_data
from kdforge.runner import resolve

from common import accuracy_record, adamw_cosine, mean_std, run_recipe, save


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file of uint8 data."""
    path.write_bytes(struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape) + array.tobytes())


def write_sets(folder: Path, n_train: int, n_test: int) -> dict[str, str]:
    """The same samples as IDX files (built-in loader) and as PNG class folders (files)."""
    raw = {key: read_idx(path) for key, path in locate().items()}
    limits = {"train": n_train, "test": n_test}
    (folder / "idx").mkdir()
    for key, stem in FILES.items():
        write_idx(folder / "idx" / stem, np.ascontiguousarray(raw[key][: limits[key.split("_")[0]]]))
    for split, n in limits.items():
        for i, (image, label) in enumerate(zip(raw[f"{split}_images"][:n], raw[f"{split}_labels"][:n], strict=True)):
            cls = folder / "png" / split / f"{label}-{CLASS_NAMES[label].replace('/', '_')}"
            cls.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(cls / f"{i:05d}.png")
    return {"builtin": str(folder / "idx"), "files": str(folder / "png")}


def recipe(source: str, root: str, seed: int, epochs: float) -> dict[str, Any]:
    """An MLP student with CE from either data set; everything else identical."""
    if source == "builtin":
        data = {"name": "fashion_mnist", "params": {"root": root, "val_fraction": 0.1, "seed": 0}}
    else:
        params = {"train": f"{root}/train", "test": f"{root}/test", "val_fraction": 0.1, "seed": 0}
        data = {"name": "files", "params": params}
    return {
        "name": f"images-{source}",
        "seed": seed,
        "data": {**data, "batch_size": 128},
        "student": {"name": "mlp", "params": {"hidden": [256]}},
        "objectives": {"ce": 1.0},
        "train": adamw_cosine(epochs),
        "profile": False,
    }


def throughput(bundles: dict[str, Any], repeats: int = 3) -> dict[str, dict[str, float]]:
    """Images/s over one epoch of the training split (batch 128, shuffled), median of ``repeats``, interleaved."""
    times: dict[str, list[float]] = {k: [] for k in bundles}
    for r in range(repeats):
        for key, bundle in bundles.items():
            loader = make_loader(bundle.train, 128, shuffle=True, seed=r)
            start = time.perf_counter()
            n = sum(len(batch["label"]) for batch in loader)
            times[key].append(n / (time.perf_counter() - start))
    return {k: {"images_per_s": statistics.median(v), "runs": v} for k, v in times.items()}


def main() -> None:
    """Write both copies, train on each, time both loaders."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=float, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    started = time.perf_counter()
    out: dict[str, Any] = {
        "train_images": args.train,
        "test_images": args.test,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "student": "mlp [256]",
        "sources": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        roots = write_sets(Path(tmp), args.train, args.test)
        out["write_s"] = time.perf_counter() - t0
        bundles = {k: load_data(resolve(recipe(k, root, 0, 1))) for k, root in roots.items()}
        out["split_sizes"] = {k: {s: len(getattr(b, s)) for s in ("train", "val", "test")} for k, b in bundles.items()}
        out["throughput"] = throughput(bundles)
        for key, root in roots.items():
            runs = [accuracy_record(run_recipe(recipe(key, root, seed, args.epochs))) for seed in args.seeds]
            out["sources"][key] = {"runs": runs, "test_last": mean_std([r["test_last"] for r in runs])}
            print(
                f"{key}: test {[round(r['test_last'], 4) for r in runs]}, "
                f"{out['throughput'][key]['images_per_s']:.0f} images/s"
            )
    accs = {k: v["test_last"] for k, v in out["sources"].items()}
    out["gap_points"] = 100 * (accs["files"]["mean"] - accs["builtin"]["mean"])
    out["wall_s"] = time.perf_counter() - started
    print(f"written {save('files_images', out, merge_key=None)} in {out['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
