"""MiniLMv2 relation distillation on Reuters R8: all-MiniLM-L6-v2 teaches a 2-layer BERT, with and without relations.

    python benchmarks/features_text.py [--epochs 5] [--seeds 0 1 2]

The teacher is all-MiniLM-L6-v2 with a trained linear head on its frozen, mean-pooled embeddings (a linear probe,
trained once and cached). The student is kdforge's ``tiny_bert`` (2 layers, hidden 128, 2 heads, randomly
initialised, the teacher's WordPiece vocabulary) trained with its own head: CE alone, CE + MiniLMv2 Q-Q/K-K/V-V
relations between the teacher's last layer and the student's last layer (relation heads re-split to 8 on both sides,
so 12 teacher heads and 2 student heads meet), then the same two with KD added. Writes
benchmarks/results/features_text.json.
"""

from __future__ import annotations

import argparse
from typing import Any

from kdforge.bench.suites import text as text_suite

import common  # noqa: F401  (offline environment, thread count)
from common import accuracy_record, load_previous, mean_std, run_recipe, save

NAME = "features_text"
RELATIONS = {"weight": 1.0, "layers": "last", "relation_heads": 8}
CONDITIONS: dict[str, dict[str, Any]] = {
    "ce": {"ce": 1.0},
    "ce+relations": {"ce": 1.0, "minilm_relations": RELATIONS},
    "kd": {"ce": 0.5, "kd": {"weight": 0.5, "T": 4}},
    "kd+relations": {"ce": 0.5, "kd": {"weight": 0.5, "T": 4}, "minilm_relations": RELATIONS},
}


def tree(objectives: dict[str, Any], seed: int, epochs: float) -> dict[str, Any]:
    """R8 at 64 tokens, a live MiniLM teacher (its Q/K/V are recorded), a 2-layer BERT student (the text suite's)."""
    return text_suite.tree(objectives, seed, epochs, name="r8-minilm-relations")


def main() -> None:
    """Run every condition over the seeds; merge each condition into the JSON as it finishes."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS))
    args = ap.parse_args()
    for name in args.conditions:
        rows = []
        for seed in args.seeds:
            summary = run_recipe(tree(CONDITIONS[name], seed, args.epochs))
            record = accuracy_record(summary)
            record["teacher"] = float(summary["teacher"]["metrics"]["test"]["accuracy"])
            rows.append(record)
            print(name, seed, {k: round(v, 4) for k, v in record.items()}, flush=True)
        result = {
            "objectives": CONDITIONS[name],
            **{k: {**mean_std([r[k] for r in rows]), "values": [r[k] for r in rows]} for k in rows[0]},
        }
        conditions = {**(load_previous(NAME) or {}).get("conditions", {}), name: result}
        setting = __doc__.strip().splitlines()[0]
        save(NAME, {"setting": setting, "epochs": args.epochs, "max_len": 64, "conditions": conditions}, None)


if __name__ == "__main__":
    main()
