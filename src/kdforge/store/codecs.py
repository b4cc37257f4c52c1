"""Codecs: how teacher logits become shard tensors and back. Dense for small output spaces, top-k for vocabularies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kdforge.registry import CODECS
from kdforge.signals import DenseSignal, SparseSignal

Encoded = dict[str, Tensor]


@dataclass(frozen=True)
class Dense:
    """Full logits at a storage dtype (fp32, fp16 or bf16)."""

    dtype: torch.dtype
    name: str

    def encode(self, logits: Tensor) -> Encoded:
        """(N, C) logits → {'logits': (N, C) at the storage dtype}."""
        return {"logits": logits.to(self.dtype).contiguous()}

    def decode(self, tensors: Encoded, vocab_size: int) -> DenseSignal:
        """Rows back to float32 logits."""
        return DenseSignal(tensors["logits"].float())


CODECS.register("fp32")(lambda **_: Dense(torch.float32, "fp32"))
CODECS.register("fp16")(lambda **_: Dense(torch.float16, "fp16"))
CODECS.register("bf16")(lambda **_: Dense(torch.bfloat16, "bf16"))


def _id_dtype(vocab_size: int) -> torch.dtype:
    # int16 holds ids below 2^16 once reinterpreted as unsigned; larger vocabularies need int32.
    return torch.int16 if vocab_size <= 1 << 16 else torch.int32


def _pack_ids(ids: Tensor, vocab_size: int) -> Tensor:
    dtype = _id_dtype(vocab_size)
    if dtype == torch.int16:
        return ids.to(torch.int32).to(torch.int16)  # wraps ids >= 2^15; _unpack_ids undoes it
    return ids.to(torch.int32)


def _unpack_ids(packed: Tensor) -> Tensor:
    if packed.dtype == torch.int16:
        return packed.to(torch.int64) & 0xFFFF
    return packed.to(torch.int64)


@dataclass(frozen=True)
class TopK:
    """Top-k ids (packed to 16 bits where the vocabulary allows), fp16 log-probs and the tail mass."""

    k: int
    temperature: float
    name: str = "topk"

    def encode(self, logits: Tensor) -> Encoded:
        """(N, V) logits → ids, log-probs at the stored temperature, and log of the mass outside the top-k."""
        sig = SparseSignal.from_logits(logits.float() / self.temperature, self.k)
        return {
            "ids": _pack_ids(sig.ids, sig.vocab_size),
            "logprobs": sig.logprobs.to(torch.float16),
            "tail": sig.tail.to(torch.float16),
        }

    def decode(self, tensors: Encoded, vocab_size: int) -> SparseSignal:
        """Rows back to a SparseSignal."""
        return SparseSignal(
            ids=_unpack_ids(tensors["ids"]),
            logprobs=tensors["logprobs"].float(),
            tail=tensors["tail"].float(),
            vocab_size=vocab_size,
        )


@dataclass(frozen=True)
class TopKQ8(TopK):
    """Top-k with log-probs quantised to 8 bits per entry: the row's best log-prob plus a per-row step."""

    name: str = "topk_q8"

    def encode(self, logits: Tensor) -> Encoded:
        """Sorted log-probs become uint8 offsets below the row maximum, in steps of (max − min) / 255."""
        sig = SparseSignal.from_logits(logits.float() / self.temperature, self.k)
        top, low = sig.logprobs[..., :1], sig.logprobs[..., -1:]
        step = ((top - low) / 255).clamp(min=1e-6)
        q = torch.round((top - sig.logprobs) / step).clamp(0, 255).to(torch.uint8)
        return {
            "ids": _pack_ids(sig.ids, sig.vocab_size),
            "q": q,
            "top": top.squeeze(-1).to(torch.float16),
            "step": step.squeeze(-1).to(torch.float16),
            "tail": sig.tail.to(torch.float16),
        }

    def decode(self, tensors: Encoded, vocab_size: int) -> SparseSignal:
        """Dequantise the log-probs; the tail mass is stored as is."""
        top, step = tensors["top"].float().unsqueeze(-1), tensors["step"].float().unsqueeze(-1)
        logprobs = top - tensors["q"].float() * step
        return SparseSignal(_unpack_ids(tensors["ids"]), logprobs, tensors["tail"].float(), vocab_size)


@CODECS.register("topk")
def topk(k: int = 32, temperature: float = 1.0, **_: Any) -> TopK:
    """Top-k sparse codec (fp16 log-probs)."""
    return TopK(k, temperature)


@CODECS.register("topk_q8")
def topk_q8(k: int = 32, temperature: float = 1.0, **_: Any) -> TopKQ8:
    """Top-k sparse codec with 8-bit log-probs."""
    return TopKQ8(k, temperature)


def build_codec(name: str, **params: Any) -> Dense | TopK:
    """The codec ``name`` with its parameters (k, temperature for top-k codecs)."""
    return CODECS.get(name)(**params)
