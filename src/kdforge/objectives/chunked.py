"""Token losses over chunks of rows, never building a whole (tokens × vocabulary) logit tensor.

The student's logits are made from its last hidden states and output head one chunk of tokens at a time, and so are
the teacher's when it sends hidden states (a HeadSignal). The gradient is computed during the forward pass, chunk by
chunk (the term's closed-form gradient where it has one, else a local autograd on the chunk's logits; then ``g @ W``
and ``gᵀ @ h``): three matrix products per chunk, as
without chunks, and no recomputation in backward. Peak memory is O(chunk × vocabulary) instead of O(tokens ×
vocabulary). The backward only scales the stored gradients by the weights the Balancer gave the terms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.signals import DenseSignal, HeadSignal, SparseSignal

RowFn = Callable[[Tensor, "ChunkTarget", "Tensor | None"], Tensor]


@dataclass
class ChunkTarget:
    """The teaching side of rows [start, end) of a pair, made on demand and kept for the chunk's terms."""

    signal: DenseSignal | SparseSignal | HeadSignal | None
    start: int
    end: int
    vocab: int  # columns compared: both heads' shared rows (a padded head's extra rows are never compared)
    fields: Mapping[str, Tensor] = field(default_factory=dict)  # per-row batch fields (e.g. from_student)
    _log_probs: dict[float, Tensor] = field(default_factory=dict)

    @property
    def sparse(self) -> SparseSignal | None:
        """The top-k rows when the teacher's signal is sparse, else None."""
        if not isinstance(self.signal, SparseSignal):
            return None
        s = self.signal
        # A padded head's extra rows carry no probability: the tail is spread over the compared rows only.
        return SparseSignal(
            s.ids[self.start : self.end],
            s.logprobs[self.start : self.end],
            s.tail[self.start : self.end],
            min(s.vocab_size, self.vocab),
            s.temperature,
        )

    def logits(self) -> Tensor:
        """Dense float32 teacher logits of the rows (a sparse signal is reconstructed, its tail spread uniformly)."""
        return self._logits_and_owned()[0]

    def _logits_and_owned(self) -> tuple[Tensor, bool]:
        """(the logits, whether they are a fresh buffer that may be overwritten rather than a view of the signal)."""
        s = self.signal
        if isinstance(s, HeadSignal):
            return s.logits(self.start, self.end)[:, : self.vocab], True
        if isinstance(s, DenseSignal):
            rows = s.logits.reshape(-1, s.logits.shape[-1])[self.start : self.end]
            return rows.float()[:, : self.vocab], rows.dtype != torch.float32
        if isinstance(s, SparseSignal):
            sparse = self.sparse
            assert sparse is not None
            return sparse.to_dense_logits()[:, : self.vocab], True
        raise ValueError("this term needs a teacher signal, but the pair has none")

    def log_probs(self, T: float = 1.0) -> Tensor:
        """Teacher log-probabilities at temperature ``T`` (computed once per chunk and temperature)."""
        if T not in self._log_probs:
            z, owned = self._logits_and_owned()
            if T != 1:
                z, owned = z / T, True
            lse = torch.logsumexp(z, dim=-1, keepdim=True)
            # Normalised in place when the buffer is ours: the chunk's teacher side then costs one (rows × V) buffer.
            self._log_probs[T] = z.sub_(lse) if owned else z - lse
        return self._log_probs[T]

    def field(self, name: str) -> Tensor | None:
        """Rows [start, end) of a per-row batch field, None when the batch has no such field."""
        value = self.fields.get(name)
        return None if value is None else value[self.start : self.end]


@dataclass
class ChunkPlan:
    """Everything but the differentiable inputs: the terms' row functions, the teaching side, labels, sizes."""

    rows: Sequence[RowFn]
    signal: DenseSignal | SparseSignal | HeadSignal | None
    labels: Tensor | None
    chunk: int
    vocab: int
    softcap: float | None = None
    fields: Mapping[str, Tensor] = field(default_factory=dict)


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, plan: ChunkPlan) -> Tensor:
    """The chunk's float32 logits, no autograd graph."""
    with torch.no_grad():
        return F.linear(h, weight, bias).float()


def _seen(z: Tensor, plan: ChunkPlan) -> Tensor:
    """The logits the terms see: the compared columns, soft-capped when the model caps them."""
    seen = z[:, : plan.vocab] if plan.vocab < z.shape[-1] else z
    if plan.softcap is not None:
        seen = torch.tanh(seen / plan.softcap) * plan.softcap
    return seen


def _row_grad(row_fn: RowFn, z: Tensor, target: ChunkTarget, labels: Tensor | None, plan: ChunkPlan) -> Any:
    """(sum of rows, gradient w.r.t. z) from the term's closed form, or None where it has none (or cannot apply)."""
    closed = getattr(row_fn, "grad", None)
    if closed is None or plan.softcap is not None:
        return None
    with torch.no_grad():
        out = closed(_seen(z, plan), target, labels)
    if out is None:
        return None
    rows, g = out
    if g.shape[-1] < z.shape[-1]:  # a padded head's extra rows are never compared: zero gradient there
        g = F.pad(g, (0, z.shape[-1] - g.shape[-1]))
    return rows.sum(), g


def _autograd_rows(row_fn: RowFn, z: Tensor, target: ChunkTarget, labels: Tensor | None, plan: ChunkPlan) -> Any:
    """(sum of rows, gradient w.r.t. z) by autograd over the chunk, the graph freed before returning."""
    with torch.enable_grad():
        leaf = z.detach().requires_grad_()
        total = row_fn(_seen(leaf, plan), target, labels).sum()
        if not total.requires_grad:
            return total.detach(), None
        (g,) = torch.autograd.grad(total, leaf)
    return total.detach(), g


class ChunkedRows(torch.autograd.Function):
    """Sums over rows of every term's per-row loss, shape (terms,), from hidden (N, H) and head weight (V, H)."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, plan: ChunkPlan) -> Tensor:
        n_terms, n = len(plan.rows), hidden.shape[0]
        want = ctx.needs_input_grad[:3]
        grad_on = any(want)
        sums = torch.zeros(n_terms, dtype=torch.float32, device=hidden.device)
        gh = [torch.zeros_like(hidden) for _ in range(n_terms)] if want[0] else []
        gw = [torch.zeros_like(weight) for _ in range(n_terms)] if want[1] else []
        gb = [torch.zeros_like(bias) for _ in range(n_terms)] if bias is not None and want[2] else []
        w = weight.detach()
        for start in range(0, n, plan.chunk):
            end = min(n, start + plan.chunk)
            h = hidden[start:end].detach()
            labels = None if plan.labels is None else plan.labels[start:end]
            target = ChunkTarget(plan.signal, start, end, plan.vocab, plan.fields)
            z = _chunk_logits(h, w, None if bias is None else bias.detach(), plan)
            for j, row_fn in enumerate(plan.rows):
                if not grad_on:
                    with torch.no_grad():
                        sums[j] += row_fn(_seen(z, plan), target, labels).sum()
                    continue
                total, g = _row_grad(row_fn, z, target, labels, plan) or _autograd_rows(row_fn, z, target, labels, plan)
                sums[j] += total
                if g is None:
                    continue
                # Products outside autograd: recorded, they would keep every chunk's gradient until backward.
                with torch.no_grad():
                    g = g.to(weight.dtype)
                    if gh:
                        gh[j][start:end] = g @ w
                    if gw:
                        gw[j].addmm_(g.t(), h.to(weight.dtype))
                    if gb:
                        gb[j].add_(g.sum(0))
                del g
        ctx.grads = (gh, gw, gb)
        return sums

    @staticmethod
    def backward(ctx: Any, grad_sums: Tensor) -> tuple[Tensor | None, ...]:
        gh, gw, gb = ctx.grads
        ctx.grads = None  # the stored gradients are used once

        def combine(parts: list[Tensor]) -> Tensor | None:
            if not parts:
                return None
            out = parts[0] * grad_sums[0].to(parts[0].dtype)
            for j in range(1, len(parts)):
                out.add_(parts[j], alpha=float(grad_sums[j]))
            return out

        return combine(gh), combine(gw), combine(gb), None


def chunked_row_sums(hidden: Tensor, head: Any, plan: ChunkPlan) -> Tensor:
    """Per-term sums of per-row losses over every row of ``hidden`` (N, H), through ``head`` (an nn.Linear)."""
    weight = head.weight
    bias = getattr(head, "bias", None)
    return ChunkedRows.apply(hidden, weight, bias, plan)
