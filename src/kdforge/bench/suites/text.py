"""Reuters R8: all-MiniLM-L6-v2 (a linear probe on its frozen embeddings) teaches a 2-layer BERT."""

from __future__ import annotations

from typing import Any

from kdforge.bench.suite import Cell, Suite, register_suite
from kdforge.bench.suites.common import ACCURACY_COLUMNS, adamw_cosine, method_cells

EPOCHS = 4
RELATIONS = {"weight": 1.0, "layers": "last", "relation_heads": 8}
METHODS: dict[str, dict[str, Any]] = {
    "ce": {"ce": 1.0},
    "kd": {"ce": 0.5, "kd": {"weight": 0.5, "T": 4}},
    "ce+relations": {"ce": 1.0, "minilm_relations": RELATIONS},
}


def tree(objectives: dict[str, Any], seed: int, epochs: float = EPOCHS, name: str = "bench-r8") -> dict[str, Any]:
    """R8 at 64 tokens, a live MiniLM teacher (its Q/K/V recorded for relations), a randomly initialised student."""
    return {
        "name": name,
        "seed": seed,
        "profile": False,
        "data": {"name": "reuters_r8", "params": {"max_len": 64, "val_fraction": 0.1}, "batch_size": 32},
        "teacher": {
            "kind": "live",
            "seed": 0,
            "model": {"name": "minilm_classifier"},
            "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 0.005}, "log_every": 1000},
        },
        "student": {"name": "tiny_bert", "params": {"layers": 2, "hidden": 128, "heads": 2}},
        "objectives": objectives,
        "train": adamw_cosine(epochs, lr=0.001),
    }


def recipe(method: str, seed: int) -> dict[str, Any]:
    """One cell's recipe."""
    return tree(METHODS[method], seed, name=f"bench-r8-{method.replace('+', '-')}")


def cells() -> list[Cell]:
    """Every method on the one pair."""
    return method_cells(["minilm->tiny_bert"], METHODS, lambda _pair, method, seed: recipe(method, seed))


SUITE = register_suite(
    Suite(
        name="text",
        description=f"Reuters R8 (64 tokens), MiniLM-L6 probe → tiny_bert 2 layers/128/2 heads, {EPOCHS} epochs",
        cells=cells,
        columns=ACCURACY_COLUMNS,
        requires=("all-MiniLM-L6-v2 (make setup)",),
    )
)
