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

    def widen(self, tensors: Encoded, budget_bytes: int) -> Encoded:
        """A whole in-memory store, decoded ahead to float32 when that fits ``budget_bytes`` (decode is then free)."""
        logits = tensors["logits"]
        return {**tensors, "logits": logits.float()} if logits.numel() * 4 <= budget_bytes else tensors


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

    def widen(self, tensors: Encoded, budget_bytes: int) -> Encoded:
        """Top-k rows stay encoded in memory: decoding them ahead would multiply their size."""
        return tensors

    def decode(self, tensors: Encoded, vocab_size: int) -> SparseSignal:
        """Rows back to a SparseSignal."""
        return SparseSignal(
            ids=_unpack_ids(tensors["ids"]),
            logprobs=tensors["logprobs"].float(),
            tail=tensors["tail"].float(),
            vocab_size=vocab_size,
            temperature=self.temperature,
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
        return SparseSignal(
            _unpack_ids(tensors["ids"]), logprobs, tensors["tail"].float(), vocab_size, self.temperature
        )


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


def chebyshev_basis(x: Tensor, degree: int) -> Tensor:
    """(len(x), degree+1) Chebyshev polynomials T_0..T_degree at points x in [-1, 1] (well conditioned)."""
    cols = [torch.ones_like(x), x]
    while len(cols) < degree + 1:
        cols.append(2 * x * cols[-1] - cols[-2])
    return torch.stack(cols[: degree + 1], dim=1)


def log_rank_axis(count: int) -> Tensor:
    """``count`` ranks mapped to [-1, 1] on a log scale: sorted log-probs fall steeply first, then flatten."""
    r = torch.log1p(torch.arange(count, dtype=torch.float64))
    return 2 * r / r[-1].clamp(min=1e-12) - 1 if count > 1 else torch.zeros(1, dtype=torch.float64)


@dataclass(frozen=True)
class TopKPoly(TopK):
    """Top-k ids, the first ``head`` log-probs exactly, the rest as a Chebyshev fit over log-rank (fp16)."""

    degree: int = 8
    head: int = 4
    name: str = "topk_poly"

    def _split(self) -> tuple[int, int]:
        head = min(self.head, self.k)
        return head, min(self.degree, max(self.k - head - 1, 0))

    def _basis(self) -> tuple[Tensor, Tensor]:
        head, degree = self._split()
        basis = chebyshev_basis(log_rank_axis(self.k - head), degree)
        return basis, torch.linalg.pinv(basis)

    def encode(self, logits: Tensor) -> Encoded:
        """Sorted top-k log-probs → ``head`` exact values + degree+1 coefficients per position."""
        sig = SparseSignal.from_logits(logits.float() / self.temperature, self.k)
        head, _ = self._split()
        _, pinv = self._basis()
        coeffs = sig.logprobs[..., head:].double() @ pinv.T
        return {
            "ids": _pack_ids(sig.ids, sig.vocab_size),
            "head": sig.logprobs[..., :head].to(torch.float16),
            "coeffs": coeffs.to(torch.float16),
            "tail": sig.tail.to(torch.float16),
        }

    def decode(self, tensors: Encoded, vocab_size: int) -> SparseSignal:
        """Exact head, then the fitted curve at every further rank; the tail mass as stored."""
        basis, _ = self._basis()
        rest = (tensors["coeffs"].double() @ basis.T).float()
        logprobs = torch.cat([tensors["head"].float(), rest], dim=-1)
        return SparseSignal(
            _unpack_ids(tensors["ids"]), logprobs, tensors["tail"].float(), vocab_size, self.temperature
        )


@CODECS.register("topk_poly")
def topk_poly(k: int = 32, temperature: float = 1.0, degree: int = 8, head: int = 4, **_: Any) -> TopKPoly:
    """Top-k sparse codec with polynomial-compressed log-probs."""
    return TopKPoly(k, temperature, degree=degree, head=head)
