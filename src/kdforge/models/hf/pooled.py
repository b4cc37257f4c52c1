"""A transformers encoder (AutoModel) + mean or [CLS] pooling over real tokens + a linear head."""

from __future__ import annotations

from torch import Tensor, nn

from kdforge.models.text import masked_mean, padding_mask

POOLINGS = ("mean", "cls")


class PooledClassifier(nn.Module):
    """Logits (B, C) from token ids through an HF encoder, pooling and a linear head.

    The forward is kdforge's text-model convention ``forward(ids, attention_mask=None)`` (the 'module' adapter),
    not Hugging Face's keywords: the module adapter hands over the batch's mask and, for the built-in WordPiece
    data that has none, pooling falls back to "not pad id 0" exactly as kdforge's own text students do (the 'hf'
    adapter never rebuilds a mask, so pooling would average padding). Profiling, evaluation and ONNX export then
    call it like every other student, and hidden-state objectives are not offered an LM head it does not have.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, pooling: str = "mean"):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, C) from token ids (B, L)."""
        mask = padding_mask(ids, attention_mask)
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        pooled = masked_mean(hidden, mask) if self.pooling == "mean" else hidden[:, 0]
        return self.head(pooled)
