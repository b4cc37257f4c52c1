"""What teachers emit and students produce; objectives consume these, whatever the teacher kind."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class DenseSignal:
    """Teacher logits with any leading shape: (B, C) or (B, S, V)."""

    logits: Tensor

    def to(self, device: torch.device | str) -> DenseSignal:
        """The same signal on ``device``."""
        return DenseSignal(self.logits.to(device))

    def select(self, mask: Tensor) -> DenseSignal:
        """The positions where ``mask`` is True, flattened: (B, S, V) → (T, V)."""
        return DenseSignal(self.logits[mask])


@dataclass(frozen=True)
class SparseSignal:
    """Top-k of a large output space per position, plus the log of the mass outside the top-k.

    ``logprobs`` are at ``temperature`` (the one the signal was stored at): log softmax(z / temperature).
    """

    ids: Tensor
    logprobs: Tensor
    tail: Tensor
    vocab_size: int
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.ids.shape != self.logprobs.shape:
            raise ValueError(f"SparseSignal: ids {tuple(self.ids.shape)} != logprobs {tuple(self.logprobs.shape)}")
        if self.tail.shape != self.ids.shape[:-1]:
            raise ValueError(
                f"SparseSignal: tail shape {tuple(self.tail.shape)} must equal ids.shape[:-1] "
                f"{tuple(self.ids.shape[:-1])}"
            )

    @classmethod
    def from_logits(cls, logits: Tensor, k: int) -> SparseSignal:
        """Keep the top-k log-probabilities of ``logits`` and the log of the remaining mass."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        top, ids = logp.topk(k, dim=-1)
        kept = torch.logsumexp(top, dim=-1)
        tail = torch.log1p(-kept.exp().clamp(max=1 - 1e-7))
        return cls(ids=ids, logprobs=top, tail=tail, vocab_size=logits.shape[-1])

    def to_dense_logprobs(self) -> Tensor:
        """Reconstruct full log-probabilities, spreading the tail mass uniformly over the other ids."""
        k = self.ids.shape[-1]
        rest = max(self.vocab_size - k, 1)
        fill = self.tail - torch.log(torch.tensor(float(rest)))
        dense = fill.unsqueeze(-1).expand(*self.ids.shape[:-1], self.vocab_size).clone()
        return dense.scatter(-1, self.ids.long(), self.logprobs.float())

    def to_dense_logits(self) -> Tensor:
        """Dense logits equivalent to the teacher's up to a per-row constant: temperature · log p̂.

        softmax(z / T) is unchanged by a per-row shift of z, so any temperature-scaled objective computes the same
        value from these as from the original logits, up to the top-k approximation of the tail.
        """
        return self.to_dense_logprobs() * self.temperature

    def to(self, device: torch.device | str) -> SparseSignal:
        """The same signal on ``device``."""
        return replace(self, ids=self.ids.to(device), logprobs=self.logprobs.to(device), tail=self.tail.to(device))

    def select(self, mask: Tensor) -> SparseSignal:
        """The positions where ``mask`` is True, flattened: (B, S, k) → (T, k)."""
        return replace(self, ids=self.ids[mask], logprobs=self.logprobs[mask], tail=self.tail[mask])


@dataclass(frozen=True)
class HeadSignal:
    """A causal LM's last hidden states and its output head: logits are made a chunk of rows at a time, never whole.

    ``hidden`` is (..., H); ``weight`` (V, H) and ``bias`` (V,) or None are the LM head; ``softcap`` is Gemma's
    final-logit soft-capping (tanh(z / c)·c), applied where the model applies it.
    """

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None = None
    softcap: float | None = None

    @property
    def vocab_size(self) -> int:
        """Rows of the output head."""
        return int(self.weight.shape[0])

    def logits(self, start: int, end: int) -> Tensor:
        """Float32 logits of the flattened rows [start, end)."""
        h = self.hidden.reshape(-1, self.hidden.shape[-1])[start:end]
        z = torch.nn.functional.linear(h.to(self.weight.dtype), self.weight, self.bias).float()
        return z if self.softcap is None else torch.tanh(z / self.softcap) * self.softcap

    def to(self, device: torch.device | str) -> HeadSignal:
        """The hidden states on ``device``; the head's weights follow them (a teacher on another device)."""
        bias = None if self.bias is None else self.bias.to(device)
        return replace(self, hidden=self.hidden.to(device), weight=self.weight.to(device), bias=bias)

    def select(self, mask: Tensor) -> HeadSignal:
        """The positions where ``mask`` is True, flattened: (B, S, H) → (T, H)."""
        return replace(self, hidden=self.hidden[mask])


@dataclass(frozen=True)
class FeatureSignal:
    """Named intermediate tensors, from a Recorder or a store."""

    tensors: Mapping[str, Tensor]

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]


@dataclass(frozen=True)
class Needs:
    """What an objective consumes; the Distiller unions these and asks the teacher only for them."""

    teacher_logits: bool = False
    labels: bool = False
    student_features: tuple[str, ...] = ()
    teacher_features: tuple[str, ...] = ()
    student_hidden: bool = False  # last hidden states + output head, for losses that never build full logits
    teacher_hidden: bool = False  # the teacher's too: its logits are then made per chunk of tokens (HeadSignal)
    student_logits: bool = False  # with student_hidden: full logits are wanted as well (a term without a row form)

    def __or__(self, other: Needs) -> Needs:
        return Needs(
            teacher_logits=self.teacher_logits or other.teacher_logits,
            labels=self.labels or other.labels,
            student_features=tuple(dict.fromkeys(self.student_features + other.student_features)),
            teacher_features=tuple(dict.fromkeys(self.teacher_features + other.teacher_features)),
            student_hidden=self.student_hidden or other.student_hidden,
            teacher_hidden=self.teacher_hidden or other.teacher_hidden,
            student_logits=self.student_logits or other.student_logits,
        )

    @property
    def teacher(self) -> bool:
        """Whether the teaching side must be asked for anything at all."""
        return self.teacher_logits or bool(self.teacher_features)


@dataclass(frozen=True)
class TeacherOutput:
    """Everything a teacher returned for one batch; fields it was not asked for stay None."""

    logits: DenseSignal | SparseSignal | HeadSignal | None = None
    features: FeatureSignal | None = None
    mask: Tensor | None = None  # (B, S) bool for sequences: True at real tokens, False at padding


@dataclass(frozen=True)
class StudentOutput:
    """What a model adapter returns: logits, the features asked for, and (when asked) hidden states + output head."""

    logits: Tensor | None  # None when only hidden states + head were asked for (chunked token losses)
    features: Mapping[str, Tensor] = field(default_factory=dict)
    hidden: Tensor | None = None  # (..., H) last hidden states, the input of ``head``
    head: Callable[[Tensor], Tensor] | None = None  # hidden → logits (e.g. the LM head), for chunked token losses
    mask: Tensor | None = None  # (B, S) bool for sequences: True at real tokens

    def as_teacher(self) -> TeacherOutput:
        """This output, detached, as the teaching side of a pair (a student teaching another student)."""
        feats = FeatureSignal({k: v.detach() for k, v in self.features.items()}) if self.features else None
        if self.logits is None and self.hidden is not None and isinstance(self.head, torch.nn.Linear):
            head = self.head
            bias = None if head.bias is None else head.bias.detach()
            signal: DenseSignal | HeadSignal | None = HeadSignal(self.hidden.detach(), head.weight.detach(), bias)
        else:
            signal = None if self.logits is None else DenseSignal(self.logits.detach())
        return TeacherOutput(logits=signal, features=feats, mask=self.mask)


@dataclass(frozen=True)
class Progress:
    """Where training is: optimizer step, fractional epoch and fraction of the budget (None outside training)."""

    step: int = 0
    epoch: float | None = None
    progress: float | None = None
