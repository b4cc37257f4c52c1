"""Augmented views in the store: KD with flip-and-crop from a live teacher vs from stores of 1 or 4 views.

The demo's setting (CNN teacher, MLP student on a 10 % transfer set of Fashion-MNIST, KD with T=8, α=0.5) with
`augment: flip_crop`. A live teacher sees a fresh view every epoch; a store holds N views per sample and epoch e
trains on view e % N, the very image the teacher saw. Reports test accuracy (mean ± std over seeds), training wall
time and the store build time. Writes benchmarks/results/store_views.json.
Usage: python benchmarks/store_views.py [--seeds 0 1 2] [--views 4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from kdforge.recipe import load_yaml
from kdforge.recipes import find
from kdforge.runner import resolve
from kdforge.strategies.cache import build_from_recipe, inspect

from common import accuracy_record, mean_std, run_recipe, save


def base_recipe(store: str, views: int) -> dict[str, Any]:
    """The default demo's recipe, one variant (KD), with flip-and-crop and a store section."""
    tree = load_yaml(find("fmnist-demo"))
    tree.pop("variants")
    tree["name"] = "fmnist-views"
    tree["data"]["params"]["augment"] = "flip_crop"
    tree["store"] = {"path": store, "codec": "fp16", "views": views, "view_seed": 0, "shard_size": 4096}
    tree["profile"] = False
    return tree


def main() -> None:
    """Build the stores, then train every seed of every setting."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--views", type=int, default=4)
    args = ap.parse_args()
    settings: dict[str, Any] = {}
    stores: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for views in sorted({1, args.views}):
            path = str(Path(tmp) / f"views{views}")
            built = build_from_recipe(resolve(base_recipe(path, views)))
            info = inspect(path)
            stores[f"views{views}"] = {
                "seconds": built["seconds"],
                "size_bytes": info["size_bytes"],
                "bytes_per_record": info["bytes_per_record"],
                "view": info["view"],
            }
        runs = {
            "live_fresh_views": ({"teacher.kind": "live"}, None),
            **{f"store_{v}_views": ({"teacher.kind": "cached"}, v) for v in sorted({1, args.views})},
            "no_augmentation_precomputed": ({"teacher.kind": "precomputed", "data.params.augment": "none"}, None),
        }
        for name, (overrides, views) in runs.items():
            path = str(Path(tmp) / f"views{views or 1}")
            records = []
            for seed in args.seeds:
                summary = run_recipe(base_recipe(path, views or 1), {**overrides, "seed": seed})
                records.append(accuracy_record(summary))
                print(name, seed, records[-1])
            settings[name] = {
                "test_last": mean_std([r["test_last"] for r in records]),
                "test_best": mean_std([r["test_best"] for r in records]),
                "train_wall_s": mean_std([r["wall_s"] for r in records]),
                "runs": records,
            }
    save(
        "store_views",
        {
            "setting": (
                "fmnist-demo (CNN teacher, MLP[256] student, 10% transfer set, KD T=8 α=0.5) with flip_crop; the "
                "teacher is trained with the same augmentation (the no-augmentation row uses the demo's teacher, "
                "trained without it)"
            ),
            "seeds": args.seeds,
            "stores": stores,
            "settings": settings,
        },
        merge_key=None,
    )


if __name__ == "__main__":
    main()
