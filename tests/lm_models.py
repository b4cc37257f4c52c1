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


def tiny_gguf_writer(gguf: Any, path: str, vocab: int, hidden: int = 16, inner: int = 32) -> Any:
    """A GGUFWriter holding a one-layer llama's metadata and random tensors; the caller adds tokenizer keys and
    writes it (``finish_gguf``)."""
    import numpy as np

    rng = np.random.default_rng(0)

    def weight(*shape: int) -> np.ndarray:
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)

    tensors = {"token_embd.weight": weight(vocab, hidden), "output_norm.weight": np.ones(hidden, np.float32)}
    tensors["output.weight"] = weight(vocab, hidden)
    for name in ("attn_norm", "ffn_norm"):
        tensors[f"blk.0.{name}.weight"] = np.ones(hidden, np.float32)
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        tensors[f"blk.0.{name}.weight"] = weight(hidden, hidden)
    tensors.update({"blk.0.ffn_gate.weight": weight(inner, hidden), "blk.0.ffn_up.weight": weight(inner, hidden)})
    tensors["blk.0.ffn_down.weight"] = weight(hidden, inner)
    meta = {"context_length": 64, "embedding_length": hidden, "block_count": 1, "feed_forward_length": inner}
    meta.update({"head_count": 2, "head_count_kv": 2, "rope_dimension_count": hidden // 2, "vocab_size": vocab})
    writer = gguf.GGUFWriter(path, "llama")
    for key, value in meta.items():
        getattr(writer, f"add_{key}")(value)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    return writer


def finish_gguf(writer: Any) -> None:
    """Write and close a GGUFWriter built by ``tiny_gguf_writer``."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
