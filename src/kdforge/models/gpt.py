"""A small GPT (causal decoder) built from a config: per-token logits (B, S, V) for causal-LM students and tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.errors import ConfigError
from kdforge.registry import MODELS


class Block(nn.Module):
    """Pre-norm causal self-attention and an MLP, each with a residual connection."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        b, s, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        # Causal attention: right padding never leaks into the real tokens before it, so no padding mask is needed.
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, s, w))
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    """Token + position embeddings, ``layers`` blocks, a final norm and an untied vocabulary head."""

    def __init__(self, vocab_size: int, max_len: int, width: int, layers: int, heads: int):
        super().__init__()
        if heads < 1 or layers < 0 or width < 1:
            raise ConfigError(f"model 'tiny_gpt': width={width}, layers={layers}, heads={heads} must be positive")
        if width % heads:
            raise ConfigError(f"model 'tiny_gpt': width={width} must be divisible by heads={heads}")
        self.tokens, self.positions = nn.Embedding(vocab_size, width), nn.Embedding(max_len, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab_size, bias=False)

    def forward(self, ids: Tensor, return_hidden: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B, S, V); with ``return_hidden`` also the final-norm hidden states (B, S, W) that ``head`` maps."""
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        hidden = self.norm(x)
        logits = self.head(hidden)
        return (logits, hidden) if return_hidden else logits


@MODELS.register("tiny_gpt")
def tiny_gpt(
    num_classes: int, input_shape: tuple[int, ...], width: int = 64, layers: int = 2, heads: int = 2
) -> TinyGPT:
    """Causal decoder over token ids of shape (max_len,); ``num_classes`` is the vocabulary size."""
    if len(input_shape) != 1:
        raise ConfigError(f"model 'tiny_gpt' takes token ids of shape (max_len,), got input_shape {input_shape}")
    return TinyGPT(num_classes, input_shape[0], width, layers, heads)
