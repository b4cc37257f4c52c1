"""Text batches: token ids padded to the longest row of the batch, its attention mask, and the raw strings."""

from __future__ import annotations

from typing import Any

import datasets
import torch
from torch import Tensor

from kdforge.data.files.gather import TextColumn, TokenColumn
from kdforge.data.files.tokenize import IDS, TEXT


class TextInputs:
    """Builds a batch from source rows: ``input`` (B, L) ids, ``attention_mask`` (B, L), ``text`` (list of str)."""

    def __init__(self, tokens: datasets.Dataset, pad_id: int):
        self.tokens, self.pad_id = tokens, pad_id
        self._ids, self._text = TokenColumn(tokens, IDS), TextColumn(tokens, TEXT)

    def batch(self, rows: Tensor) -> dict[str, Any]:
        """Pad per batch: L is the longest row here (at most max_len), not max_len."""
        lengths, flat = (torch.from_numpy(a) for a in self._ids.take(rows.numpy()))
        width = max(int(lengths.max()) if len(lengths) else 0, 1)
        mask = torch.arange(width) < lengths.unsqueeze(1)
        padded = torch.full((len(rows), width), self.pad_id, dtype=torch.int64)
        # masked_scatter_, not padded[mask] = flat: torch's parallel index_put took 7 ms here on 2 busy cores (11 µs).
        padded.masked_scatter_(mask, flat)
        return {"input": padded, "attention_mask": mask.long(), "text": self._text.take(rows.numpy())}
