"""Token losses over chunks of rows, never building a whole (tokens × vocabulary) logit tensor.

The student's logits are made from its last hidden states and output head one chunk of tokens at a time, and so are
the teacher's when it sends hidden states (a HeadSignal). The gradient is computed during the forward pass, chunk by
chunk (a local autograd on the chunk's logits, then ``g @ W`` and ``gᵀ @ h``): three matrix products per chunk, as
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
    _logits: Tensor | None = None
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
        if self._logits is None:
            s = self.signal
            if isinstance(s, HeadSignal):
                z = s.logits(self.start, self.end)
            elif isinstance(s, DenseSignal):
                z = s.logits.reshape(-1, s.logits.shape[-1])[self.start : self.end].float()
            elif isinstance(s, SparseSignal):
                sparse = self.sparse
                assert sparse is not None
                z = sparse.to_dense_logits()
            else:
                raise ValueError("this term needs a teacher signal, but the pair has none")
            self._logits = z[:, : self.vocab]
        return self._logits

    def log_probs(self, T: float = 1.0) -> Tensor:
        """Teacher log-probabilities at temperature ``T`` (computed once per chunk and temperature)."""
        if T not in self._log_probs:
            z = self.logits()
            self._log_probs[T] = torch.log_softmax(z if T == 1 else z / T, dim=-1)
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


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, plan: ChunkPlan, grad: bool) -> tuple[Tensor, Tensor]:
    """(leaf logits that gradients are taken at, the float32 logits the terms see)."""
    z = F.linear(h, weight, bias).float()
    if grad:
        z.requires_grad_()
    seen = z[:, : plan.vocab] if plan.vocab < z.shape[-1] else z
    if plan.softcap is not None:
        seen = torch.tanh(seen / plan.softcap) * plan.softcap
    return z, seen


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
        for start in range(0, n, plan.chunk):
            end = min(n, start + plan.chunk)
            h = hidden[start:end]
            labels = None if plan.labels is None else plan.labels[start:end]
            target = ChunkTarget(plan.signal, start, end, plan.vocab, plan.fields)
            with torch.set_grad_enabled(grad_on):
                b = None if bias is None else bias.detach()
                z, seen = _chunk_logits(h.detach(), weight.detach(), b, plan, grad_on)
                for j, row_fn in enumerate(plan.rows):
                    total = row_fn(seen, target, labels).sum()
                    sums[j] += total.detach()
                    if not grad_on or not total.requires_grad:
                        continue
                    (g,) = torch.autograd.grad(total, z, retain_graph=j < n_terms - 1)
                    # Outside autograd: recorded, these products would keep every chunk's gradient until backward.
                    with torch.no_grad():
                        g = g.to(weight.dtype)
                        if gh:
                            gh[j][start:end] = g @ weight.detach()
                        if gw:
                            gw[j].addmm_(g.t(), h.detach().to(weight.dtype))
                        if gb:
                            gb[j].add_(g.sum(0))
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
