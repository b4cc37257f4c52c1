"""Causal-LM evaluation, streamed over batches and chunks of tokens: perplexity, accuracy, teacher agreement, KL.

No (tokens × vocabulary) tensor is gathered: every metric is a sum over tokens computed a chunk at a time by the same
engine as the token losses, then divided by the number of target tokens (summed over processes when ``reduce`` is
given).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.adapters import adapter_for
from kdforge.objectives.chunked import ChunkPlan, ChunkTarget, chunked_row_sums
from kdforge.signals import HeadSignal, Needs

IGNORE = -100


def _nll(s: Tensor, target: ChunkTarget, labels: Tensor | None) -> Tensor:
    assert labels is not None
    return F.cross_entropy(s, labels.long(), reduction="none")


def _correct(s: Tensor, target: ChunkTarget, labels: Tensor | None) -> Tensor:
    assert labels is not None
    return (s.argmax(-1) == labels).float()


def _agree(s: Tensor, target: ChunkTarget, labels: Tensor | None) -> Tensor:
    return (s.argmax(-1) == target.log_probs(1.0).argmax(-1)).float()  # the KL metric reuses these


def _kl(s: Tensor, target: ChunkTarget, labels: Tensor | None) -> Tensor:
    log_p = target.log_probs(1.0)
    log_q = torch.log_softmax(s, dim=-1)
    return torch.where(log_p > -math.inf, log_p.exp() * (log_p - log_q), torch.zeros_like(log_p)).sum(-1)


class _RecordedKL:
    """The ``_kl`` row function that also keeps each row's value, for KL per position."""

    def __init__(self, n_rows: int, device: torch.device):
        self.values = torch.zeros(n_rows, dtype=torch.float64, device=device)

    def __call__(self, s: Tensor, target: ChunkTarget, labels: Tensor | None) -> Tensor:
        rows = _kl(s, target, labels)
        self.values[target.start : target.end] = rows.double()
        return rows


def add_per_position(sums: Tensor, counts: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Add the values of the masked positions of a (B, S) ``mask`` (row-major order) to per-position sums/counts."""
    positions = mask.nonzero()[:, 1].cpu()
    width = int(mask.shape[1])
    if width > len(sums):  # a longer batch than any before: grow both
        sums = torch.cat([sums, torch.zeros(width - len(sums), dtype=torch.float64)])
        counts = torch.cat([counts, torch.zeros(width - len(counts), dtype=torch.float64)])
    sums.index_add_(0, positions, values.double().cpu())
    counts.index_add_(0, positions, torch.ones(len(positions), dtype=torch.float64))
    return sums, counts


def _hidden_and_head(model: nn.Module, batch: Mapping[str, Any]) -> tuple[Tensor, Any, float | None]:
    adapter = adapter_for(model)
    out = adapter(dict(batch), Needs(student_hidden=True))
    return out.hidden, out.head, adapter.softcap


def _teacher_signal(teacher: nn.Module, batch: Mapping[str, Any], device: torch.device) -> HeadSignal:
    """The teacher network's last hidden states + head on ``batch`` (its logits are made per chunk)."""
    t_device = next(teacher.parameters()).device
    moved = {k: v.to(t_device) if torch.is_tensor(v) else v for k, v in batch.items()}
    hidden, head, softcap = _hidden_and_head(teacher, moved)
    bias = None if head.bias is None else head.bias.to(device)
    return HeadSignal(hidden.to(device), head.weight.to(device), bias, softcap)


def lm_metrics(
    model: nn.Module,
    loader: Iterable[Mapping[str, Tensor]],
    device: str | torch.device = "cpu",
    teacher: nn.Module | None = None,
    chunk_size: int = 512,
    reduce: Callable[[Tensor], Tensor] | None = None,
    per_position: bool = False,
) -> dict[str, Any]:
    """nll, perplexity, next-token accuracy; with a teacher network also top-1 agreement and KL(p_t ‖ p_s) per token.

    ``per_position`` (with a teacher) adds ``kl_per_position``: at each position s, the mean KL over the sequences
    that have a target at s (not gathered across processes).
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)  # nll, correct, agree, kl, tokens
    pos_sums = torch.zeros(0, dtype=torch.float64)
    pos_counts = torch.zeros(0, dtype=torch.float64)
    try:
        with torch.no_grad():
            for batch in loader:
                moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                hidden, head, softcap = _hidden_and_head(model, moved)
                labels = moved["label"]
                mask = labels != IGNORE
                if moved.get("attention_mask") is not None:
                    mask = mask & moved["attention_mask"].bool()
                signal = None if teacher is None else _teacher_signal(teacher, moved, hidden.device).select(mask)
                recorder = _RecordedKL(int(mask.sum()), hidden.device) if per_position and signal is not None else None
                rows = [_nll, _correct] + ([_agree, recorder or _kl] if signal is not None else [])
                vocab = int(head.weight.shape[0])
                if signal is not None:
                    vocab = min(vocab, signal.vocab_size)
                plan = ChunkPlan(rows, signal, labels[mask], chunk_size, vocab, softcap)
                got = chunked_row_sums(hidden[mask], head, plan).double().cpu()
                sums[: len(got)] += got
                sums[4] += float(mask.sum())
                if recorder is not None:
                    pos_sums, pos_counts = add_per_position(pos_sums, pos_counts, recorder.values, mask)
    finally:
        model.train(was_training)
    if reduce is not None:
        sums = reduce(sums.to(device)).double().cpu()
    n = max(float(sums[4]), 1.0)
    nll = float(sums[0]) / n
    out = {"nll": nll, "perplexity": math.exp(min(nll, 700.0)), "accuracy": float(sums[1]) / n, "tokens": int(sums[4])}
    if teacher is not None:
        out.update({"agreement": float(sums[2]) / n, "kl": float(sums[3]) / n})
        if per_position:
            seen = pos_counts > 0
            # Trailing positions without any target are dropped; an inner one without targets is None.
            last = int(seen.nonzero().max()) + 1 if bool(seen.any()) else 0
            out["kl_per_position"] = [float(pos_sums[i] / pos_counts[i]) if seen[i] else None for i in range(last)]
    return out


@torch.no_grad()
def greedy_samples(
    model: nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int = 24, device: str | torch.device = "cpu"
) -> list[str]:
    """Greedy continuations of ``prompts`` (the KV cache of ``generate`` for transformers models), decoded."""
    adapter = adapter_for(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=device)
            batch = {"input": ids, "attention_mask": torch.ones_like(ids)}
            full = adapter.generate(batch, max_new_tokens)
            out.append(tokenizer.decode(full[0, ids.shape[1] :].tolist(), skip_special_tokens=True))
    finally:
        model.train(was_training)
    return out
