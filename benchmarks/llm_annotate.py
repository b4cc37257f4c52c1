"""No training labels (Reuters R8): LLM and embedding teachers annotate a budget of training texts; a student learns
their soft labels and their hard labels; teacher–gold agreement and student test accuracy next to the same student on
gold labels. Gemma-3-270M label scoring runs in process and through llama.cpp's server, and the two are compared.

    python llm_annotate.py [N]        # N training texts annotated (default 200); writes results/llm_annotate.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from kdforge.llm import assets
from kdforge.llm.annotate import annotate, load_recipe
from llm_common import BASE_PROMPT, CHAT_PROMPT, LABELS, bench_folder, r8_files, server, student_recipe

from common import mean_std, run_recipe, save

SEEDS = (0, 1)
SERVED_SUBSET = 50


def job(name: str, teacher: dict, data: Path, out: Path, limit: int | None = None, **labeling: Any) -> dict:
    """An annotate recipe over the training subset (gold kept aside for the agreement report)."""
    return {
        "name": name,
        "teacher": teacher,
        "annotate": {
            "input": {"path": str(data), "gold_column": "label", "limit": limit},
            "labels": LABELS,
            **labeling,
        },
        "output_dir": str(out),
        "cache": str(out / "requests.sqlite"),
    }


def students(name: str, labeled: Path, test: Path, gold_train: Path) -> dict[str, Any]:
    """Test accuracy of the student on the teacher's soft labels, its hard labels, and (once) on gold labels."""
    soft = {"kind": "annotations", "path": str(labeled)}
    runs = {
        "soft": (labeled, soft, {"kd": {"weight": 1.0, "T": 1}}),
        "hard": (labeled, None, {"ce": 1.0}),
    }
    if name == "gold":
        runs = {"gold": (gold_train, None, {"ce": 1.0})}
    out = {}
    for kind, (train, teacher, objectives) in runs.items():
        accs = [
            run_recipe(student_recipe(f"{name}-{kind}", train, test, seed, teacher, objectives))["test"]["accuracy"]
            for seed in SEEDS
        ]
        out[kind] = mean_std(accs)
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    work = bench_folder("llm_annotate")
    files = r8_files(work, {"train": ("train", n), "test": ("test", None)})
    teachers: dict[str, Any] = {}

    def record(name: str, tree: dict) -> dict:
        started = time.perf_counter()
        summary = annotate(load_recipe(tree), show=False)
        a = summary["agreement"]
        teachers[name] = {
            "teacher": summary["teacher"],
            "method": summary["method"],
            "calibrated": summary["calibration"] is not None,
            "accuracy": a["accuracy"],
            "cohen_kappa": a["cohen_kappa"],
            "macro_f1": a["macro_f1"],
            "coverage": a["coverage"],
            "counts": summary["counts"],
            "seconds": round(time.perf_counter() - started, 1),
            "requests": summary["usage"]["requests"],
        }
        print(name, json.dumps(teachers[name]), flush=True)
        return summary

    out = work / "jobs"
    # (a) Gemma-3-270M, calibrated label scoring: in process ...
    gemma_local = job("gemma-local", {"kind": "local", "model": "gemma3-270m"}, files["train"], out,
                      method="score", calibrate=True, prompt=BASE_PROMPT)  # fmt: skip
    record("gemma-local", gemma_local)
    # The same model with the raw label names and no calibration: what verbalizers + calibration are worth.
    raw = {**gemma_local, "name": "gemma-raw", "annotate": {**gemma_local["annotate"], "labels": list(LABELS),
                                                            "calibrate": False}}  # fmt: skip
    record("gemma-local (raw names, uncalibrated)", raw)
    # ... and through llama.cpp's server (next-token walk: its echo sorts 262k logits per prompt token in Python).
    srv = server(assets.gemma_gguf(), chat_format="gemma", alias="gemma3-270m")
    try:
        served = {"kind": "served", "base_urls": [srv.url], "model": srv.model, "concurrency": 1,
                  "score_mode": "next_token", "score_top": 20000}  # fmt: skip
        # A subset: each request costs llama-cpp-python a Python sort of 262k logits + 5000 detokenisations (~6 s
        # here), so the whole budget would take most of an hour; the subset measures agreement with in process.
        record("gemma-llama.cpp", job("gemma-llama", served, files["train"], out, SERVED_SUBSET, method="score",
                                      calibrate=True, prompt=BASE_PROMPT))  # fmt: skip
    finally:
        srv.stop()
    local_rows = [json.loads(x) for x in (out / "gemma-local/annotations.jsonl").read_text().splitlines()]
    served_rows = [json.loads(x) for x in (out / "gemma-llama/annotations.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in local_rows}
    pairs = [(by_id[b["id"]], b) for b in served_rows if b["probs"] and by_id[b["id"]]["probs"]]
    same = float(np.mean([a["label"] == b["label"] for a, b in pairs]))
    gap = float(np.mean([np.abs(np.array(a["probs"]) - np.array(b["probs"])).sum() / 2 for a, b in pairs]))
    agreement_local_served = {
        "same_label": same,
        "mean_total_variation": gap,
        "rows": len(pairs),
        "gold_accuracy_in_process": float(np.mean([a["label"] == a["gold"] for a, _ in pairs])),
        "gold_accuracy_llama_cpp": float(np.mean([b["label"] == b["gold"] for _, b in pairs])),
    }
    print("gemma local vs llama.cpp", agreement_local_served, flush=True)
    # (b) SmolLM2-135M-Instruct through llama.cpp's server: calibrated label scoring (next-token walk), and the
    # first-token logprobs of its chat answer (which rarely is a label word: those texts are recorded unknown).
    srv = server(assets.smollm2_gguf())
    try:
        served = {"kind": "served", "base_urls": [srv.url], "model": srv.model, "concurrency": 2,
                  "extra_body": {"repeat_penalty": 1.0}}  # fmt: skip
        scored = {**served, "score_mode": "next_token", "score_top": 20000}
        record("smollm2-llama.cpp", job("smollm2-score", scored, files["train"], out, method="score", calibrate=True,
                                        prompt=BASE_PROMPT))  # fmt: skip
        record("smollm2-chat", job("smollm2", served, files["train"], out, method="logprobs", prompt=CHAT_PROMPT))
    finally:
        srv.stop()
    # (c) the MiniLM embedding teacher, zero-shot by label descriptions.
    minilm = {"kind": "embedding", "model": "minilm", "prefix": "This article is about "}
    record("minilm", job("minilm", minilm, files["train"], out))

    results: dict[str, Any] = {"gold": {"students": students("gold", files["train"], files["test"], files["train"])}}
    results["smollm2-chat"] = {**teachers["smollm2-chat"], "students": None}  # too few labelled texts to train on
    raw_name = "gemma-local (raw names, uncalibrated)"
    results[raw_name] = {**teachers[raw_name], "students": None}  # a baseline for the wording, not a teacher
    for name, folder in (("gemma-local", "gemma-local"), ("smollm2-llama.cpp", "smollm2-score"), ("minilm", "minilm")):
        labeled = out / folder / "labeled.parquet"
        results[name] = {**teachers[name], "students": students(name, labeled, files["test"], files["train"])}
        print(name, json.dumps(results[name]["students"]), flush=True)
    save(
        "llm_annotate",
        {
            "setup": {
                "annotated_training_texts": n,
                "subset": "seeded random sample (seed 0) of R8 train",
                "test_texts": len(files["test"].read_text().splitlines()),
                "student": "text_bag (MiniLM WordPiece ids)",
                "student_training": "15 epochs AdamW 3e-3, batch 32",
                "seeds": list(SEEDS),
            },
            "teachers": results,
            "gemma_llama_cpp_subset": teachers["gemma-llama.cpp"],
            "gemma_local_vs_llama_cpp": agreement_local_served,
        },
        merge_key=None,
    )


if __name__ == "__main__":
    main()
