"""Jane Austen's novels: SmolLM2-135M-Instruct teaches a 4-layer Llama student (forward KL, reverse KL, JSD)."""

from __future__ import annotations

from typing import Any

from kdforge.bench.suite import Cell, Column, Suite, register_suite
from kdforge.bench.suites.common import method_cells

STEPS, BATCH, MAX_LEN = 100, 8, 128
TEACHER = {"name": "hf", "params": {"path": "~/.cache/kdforge/llm/smollm2-135m-instruct", "task": "causal_lm"}}
STUDENT = {
    "name": "hf",
    "params": {
        "task": "causal_lm",
        "config": {"model_type": "llama", "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
                   "tie_word_embeddings": True},
    },
}  # fmt: skip
METHODS: dict[str, dict[str, Any]] = {
    "ce": {"ce": 1.0},
    "forward_kl": {"kl": {"objective": "forward_kl", "weight": 1.0}},
    "reverse_kl": {"kl": {"objective": "reverse_kl", "weight": 1.0}},
    "jsd": {"kl": {"objective": "jsd", "weight": 1.0, "beta": 0.5}},
}


def recipe(method: str, seed: int) -> dict[str, Any]:
    """Next-token training on Austen blocks with a live teacher; test perplexity every 25 steps."""
    return {
        "name": f"bench-austen-{method}",
        "seed": seed,
        "profile": False,
        "data": {
            "name": "austen_lm",
            "batch_size": BATCH,
            "eval_batch_size": 16,
            "params": {"max_len": MAX_LEN, "val_fraction": 0.0, "test_limit": 64, "train_limit": STEPS * BATCH},
        },
        "teacher": {"kind": "live", "model": TEACHER},
        "student": STUDENT,
        "objectives": METHODS[method],
        "train": {"max_steps": STEPS, "chunk_size": 1024, "eval_every": 25, "log_every": 5,
                  "optimizer": {"name": "adamw", "lr": 0.003}, "select": "last"},
    }  # fmt: skip


def cells() -> list[Cell]:
    """Every method on the one pair."""
    return method_cells(["smollm2-135m->llama-4x128"], METHODS, lambda _pair, method, seed: recipe(method, seed))


SUITE = register_suite(
    Suite(
        name="llm",
        description=f"Austen blocks of {MAX_LEN} tokens, SmolLM2-135M teacher → 4-layer Llama, {STEPS} steps × {BATCH}",
        cells=cells,
        columns=(
            Column("test_last", "last test perplexity"),
            Column("test_best", "best test perplexity"),
            Column("best_epoch", "best epoch", digits=2),
        ),
        metric="perplexity",
        higher_is_better=False,
        requires=("SmolLM2-135M-Instruct folder (make setup)",),
    )
)
