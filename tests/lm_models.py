"""Small causal LMs and recipe pieces the causal-LM tests share: built from configs, nothing downloaded."""

from __future__ import annotations

from typing import Any

import torch

# A one-layer Llama student for recipes (its vocabulary comes from the data's tokenizer).
LM_STUDENT: dict[str, Any] = {
    "name": "hf",
    "params": {
        "task": "causal_lm",
        "config": {
            "model_type": "llama",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 128,
            "tie_word_embeddings": True,
        },
    },
}


def tiny_llama(seed: int, vocab: int, hidden: int = 16, positions: int = 64, tied: bool = False) -> torch.nn.Module:
    """A 1-layer LlamaForCausalLM with seeded weights (bos 0, eos 1, pad 0)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=positions,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
        tie_word_embeddings=tied,
    )
    return transformers.LlamaForCausalLM(config)
