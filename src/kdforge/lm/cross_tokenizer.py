"""Teacher next-token distributions, computed on the teacher's tokenization of a text, as student targets.

Both tokenizations of the same text are lined up by character offsets. Where a teacher token and a student token
end at the same character (an *aligned* position) both models have read the same prefix and predict a token that
starts at the same place, so the teacher's distribution is mapped through ``token_map`` onto the student's
vocabulary: shared tokens keep their probability, teacher-only tokens are dropped (their mass is reported), the
rest is renormalised and stored as a top-k ``SparseSignal`` that the sparse objectives consume unchanged.

Every other student position (its prefix ends inside a teacher token) is paired with the last teacher position
whose prefix it contains. That is where a sequence-alignment loss would apply: ULD (Boizard et al. 2024), an L1
distance between the two distributions sorted by probability (``uld_rows``, ``uld_rest_rows``), which needs no shared
vocabulary but carries no token identity either.

The choice, measured in ``benchmarks/llm_vocab.py`` (Gemma-3-270M → SmolLM2, held-out Austen): direct mapping where
positions align, and no teacher target elsewhere (a run's CE term still covers those positions), rather than ULD
everywhere or ULD on the rest (the hybrid of TRL's GOLD trainer). 93.5% of student positions align, the map keeps
97.3% of the teacher's mass there, and the mapped target's top-1 is the student's next token as often as the
teacher's own top-1 is its own (28.3% vs 29.5%). ULD gives a student equal to the mapped teacher and a
token-shuffled copy of it the same loss (0.268 both; 9.4 nats apart in KL), so on the 6.5% of positions left it
would pull the student's sorted probabilities toward the teacher's without saying which token; and the paper's
pairing by index lines up the same prefix at only 22% of positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.signals import SparseSignal

Offsets = Sequence[tuple[int, int]]


@dataclass(frozen=True)
class Alignment:
    """One text's student positions paired with teacher positions (indices into each tokenization)."""

    teacher_index: Tensor  # (S_s,) long: the teacher position whose prefix the student position's prefix contains
    aligned: Tensor  # (S_s,) bool: the two prefixes end at the same character (a direct-map target)

    @property
    def pairs(self) -> tuple[Tensor, Tensor]:
        """(teacher positions, student positions) of the aligned pairs, both increasing."""
        student = self.aligned.nonzero().squeeze(-1)
        return self.teacher_index[student], student


def _prefix_ends(offsets: Offsets) -> list[int | None]:
    """Where each token's prefix ends (the character after it); None for tokens that cannot be a prefix end.

    A zero-width token (a special token added by the tokenizer) ends where the text before it ended; only the
    leading ones (``<bos>``) count, a trailing ``<eos>`` predicts beyond the text. Of several tokens ending at the
    same character (byte-level pieces of one character), only the last completes it.
    """
    ends: list[int | None] = []
    seen_text = False
    for start, end in offsets:
        if end > start:
            seen_text = True
            ends.append(end)
        else:
            ends.append(None if seen_text else 0)
    last: dict[int, int] = {}
    for i, e in enumerate(ends):
        if e is not None:
            last[e] = i
    return [e if e is not None and last[e] == i else None for i, e in enumerate(ends)]


def align_positions(teacher_offsets: Offsets, student_offsets: Offsets) -> Alignment:
    """Pair each student position with the teacher position that read the same (or the longest contained) prefix."""
    t_ends, s_ends = _prefix_ends(teacher_offsets), _prefix_ends(student_offsets)
    teacher_index = torch.full((len(s_ends),), -1, dtype=torch.long)
    aligned = torch.zeros(len(s_ends), dtype=torch.bool)
    t_pos = [(e, i) for i, e in enumerate(t_ends) if e is not None]
    k = -1  # the last teacher prefix end ≤ the current student one; both sequences of ends increase
    for j, e in enumerate(s_ends):
        if e is None:
            continue
        while k + 1 < len(t_pos) and t_pos[k + 1][0] <= e:
            k += 1
        if k >= 0:
            teacher_index[j] = t_pos[k][1]
            aligned[j] = t_pos[k][0] == e
    return Alignment(teacher_index, aligned)


def encode_with_offsets(tokenizer: Any, text: str, add_special_tokens: bool = True) -> tuple[list[int], Offsets]:
    """Token ids and character offsets of ``text`` from a transformers fast tokenizer or a ``tokenizers`` Tokenizer."""
    if hasattr(tokenizer, "backend_tokenizer"):
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    enc = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return list(enc.ids), list(enc.offsets)


@dataclass(frozen=True)
class TextAlignment:
    """Both tokenizations of one text and how their positions pair."""

    teacher_ids: list[int]
    student_ids: list[int]
    alignment: Alignment


def align_text(text: str, teacher_tokenizer: Any, student_tokenizer: Any) -> TextAlignment:
    """Tokenize ``text`` with both tokenizers (special tokens included) and pair their positions."""
    t_ids, t_off = encode_with_offsets(teacher_tokenizer, text)
    s_ids, s_off = encode_with_offsets(student_tokenizer, text)
    return TextAlignment(t_ids, s_ids, align_positions(t_off, s_off))


def decoded_offsets(tokenizer: Any, ids: Sequence[int]) -> tuple[str, Offsets] | None:
    """The text of ``ids`` and each token's character span in it, from decoding every prefix of the ids.

    For ids that do not survive a decode/re-encode round trip (a block cut between two tokens the tokenizer would
    merge, such as "\\n" "\\n" at its end). Quadratic in the length, so only the fallback. Special tokens decode to
    nothing (zero width). A piece of a multi-byte character is zero width until the token that completes it. None
    when a prefix's text is not a prefix of the whole (a decoder that rewrites earlier text).
    """
    opts = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
    prefixes = tokenizer.batch_decode([list(ids[: i + 1]) for i in range(len(ids))], **opts)
    text = prefixes[-1] if prefixes else ""
    offsets, end = [], 0
    for prefix in prefixes:
        if not prefix.endswith("\ufffd"):  # a partial character: its span closes at a later token
            if not text.startswith(prefix) or len(prefix) < end:
                return None
            offsets.append((end, len(prefix)))
            end = len(prefix)
        else:
            offsets.append((end, end))
    return text, offsets


def align_ids(ids: Sequence[int], teacher_tokenizer: Any, student_tokenizer: Any) -> TextAlignment | None:
    """Pair the positions of the student's own ``ids`` with the teacher's tokenization of their text.

    The fast path re-encodes the decoded text; ids that do not come back the same are spanned by
    ``decoded_offsets`` instead. None when neither works (the row then gets no teacher target).
    """
    text = student_tokenizer.decode(list(ids))
    pair = align_text(text, teacher_tokenizer, student_tokenizer)
    if pair.student_ids == list(ids):
        return pair
    decoded = decoded_offsets(student_tokenizer, ids)
    if decoded is None:
        return None
    text, s_off = decoded
    t_ids, t_off = encode_with_offsets(teacher_tokenizer, text)
    return TextAlignment(t_ids, list(ids), align_positions(t_off, s_off))


def map_rows(
    teacher_logprobs: Tensor, token_map: Tensor, student_rows: int, k: int = 64
) -> tuple[SparseSignal, Tensor]:
    """Teacher log-probabilities (n, V_t) → top-k SparseSignal over the student's ``student_rows`` ids, and the
    teacher mass on tokens the student lacks (n,). Rows whose mass is all dropped come back uniform."""
    n, width = teacher_logprobs.shape
    if token_map.shape != (width,):
        raise ShapeMismatchError(f"token_map has {tuple(token_map.shape)} entries, expected ({width},): one per row")
    if k > student_rows:
        raise ConfigError(f"top-k of {k} is larger than the student's {student_rows} head rows")
    if int(token_map.max()) >= student_rows:
        bad = int((token_map >= student_rows).nonzero()[0])
        raise ConfigError(
            f"token_map sends teacher id {bad} to student id {int(token_map[bad])}, past the {student_rows} head rows"
        )
    valid = (token_map >= 0).nonzero().squeeze(-1).to(teacher_logprobs.device)
    target = token_map.to(teacher_logprobs.device)[valid]
    # Only the mapped columns are needed; the floor keeps exp() off float32's slow subnormal path (e^-80 ≈ 2e-35).
    p = teacher_logprobs.float().index_select(1, valid).clamp(min=-80.0).exp()
    q = p.new_zeros(n, student_rows).index_add_(1, target, p)
    kept = q.sum(-1)
    dropped = (1.0 - kept).clamp(min=0.0)
    lost = kept <= torch.finfo(torch.float32).tiny
    q = torch.where(lost.unsqueeze(-1), torch.full_like(q, 1.0 / student_rows), q / kept.clamp(min=1e-30).unsqueeze(-1))
    top, ids = q.topk(k, dim=-1)
    # A float floor keeps log p finite where fewer than k student ids received mass.
    logprobs = top.clamp(min=torch.finfo(torch.float32).tiny).log()
    tail = torch.log1p(-top.sum(-1).clamp(max=1 - 1e-7))
    return SparseSignal(ids=ids, logprobs=logprobs, tail=tail, vocab_size=student_rows), torch.where(lost, 1.0, dropped)


def _rows(teacher: Any, index: tuple[Tensor, Tensor], chunk: int) -> Iterator[Tensor]:
    """Float32 log-probabilities of the teacher at positions ``index`` = (batch, position), ``chunk`` rows at a time.

    ``teacher``: logits or log-probs (B, S_t, V_t), or a signal with ``select`` (DenseSignal, SparseSignal — its
    tail spread uniformly — or a hidden-states-plus-head signal whose ``logits(start, end)`` makes rows on demand).
    """
    picked = teacher[index] if isinstance(teacher, Tensor) else teacher.select(index)
    n = int(index[0].numel())
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        if isinstance(picked, Tensor):
            rows = picked[start:end]
        elif isinstance(picked, SparseSignal):
            part = replace(
                picked, ids=picked.ids[start:end], logprobs=picked.logprobs[start:end], tail=picked.tail[start:end]
            )
            rows = part.to_dense_logprobs()
        elif isinstance(getattr(picked, "logits", None), Tensor):
            rows = picked.logits[start:end]
        else:
            rows = picked.logits(start, end)
        yield torch.log_softmax(rows.float(), dim=-1)


def _main_tensor(teacher: Any) -> Tensor:
    """The (B, S_t, …) tensor of a teacher signal: its length and device are the batch's."""
    if isinstance(teacher, Tensor):
        return teacher
    for name in ("logits", "ids", "hidden"):
        value = getattr(teacher, name, None)
        if isinstance(value, Tensor) and value.dim() >= 2:
            return value
    raise ConfigError(f"cannot tell the sequence length of a teacher signal of type {type(teacher).__name__}")


@dataclass(frozen=True)
class CrossSignal:
    """Teacher targets at the student's positions: the mapped signal, where it applies, and what was lost."""

    signal: SparseSignal  # (B, S_s, k) over the student's rows; uniform where ``mask`` is False
    mask: Tensor  # (B, S_s) bool: the student positions that received a mapped teacher target
    dropped: Tensor  # (B, S_s) float: teacher mass on tokens the student lacks (0 where ``mask`` is False)
    teacher_index: Tensor  # (B, S_s) long: the paired teacher position, −1 where none (the ULD path's pairs)

    @property
    def mean_dropped(self) -> float:
        """Average dropped teacher mass over the aligned positions."""
        return float(self.dropped[self.mask].mean()) if bool(self.mask.any()) else 0.0

    @property
    def rest(self) -> Tensor:
        """(B, S_s) bool: student positions with a paired teacher position but no mapped target (the ULD path)."""
        return (self.teacher_index >= 0) & ~self.mask


def _first_real(mask: Tensor | None, batch: int) -> Tensor:
    """(B,) index of each row's first real token: the left padding to skip (0 without a mask)."""
    if mask is None:
        return torch.zeros(batch, dtype=torch.long)
    return mask.bool().long().argmax(-1).cpu()


def _stack(
    alignments: Sequence[Alignment], length: int, student_start: Tensor, teacher_start: Tensor
) -> tuple[Tensor, Tensor]:
    """The alignments' (teacher_index, aligned) as (B, length) batch positions, (−1, False) where there is none."""
    index = torch.full((len(alignments), length), -1, dtype=torch.long)
    aligned = torch.zeros(len(alignments), length, dtype=torch.bool)
    for b, a in enumerate(alignments):
        start = int(student_start[b])
        n = max(0, min(length - start, a.aligned.numel()))
        t = a.teacher_index[:n]
        index[b, start : start + n] = torch.where(t >= 0, t + teacher_start[b], -1)
        aligned[b, start : start + n] = a.aligned[:n]
    return index, aligned


def cross_tokenizer_signal(
    teacher: Any,
    alignments: Sequence[Alignment],
    token_map: Tensor,
    student_rows: int,
    student_length: int,
    k: int = 64,
    teacher_mask: Tensor | None = None,
    student_mask: Tensor | None = None,
    chunk: int = 128,
) -> CrossSignal:
    """Map the teacher's distributions (B, S_t, ·) onto a batch of student sequences (B, ``student_length``).

    ``alignments[b]`` pairs row b's student and teacher positions counted from each row's first real token: the
    masks (True at real tokens) locate it in a left-padded batch. Pairs that land on teacher padding are dropped.
    """
    batch = len(alignments)
    index, aligned = _stack(
        alignments, student_length, _first_real(student_mask, batch), _first_real(teacher_mask, batch)
    )
    main = _main_tensor(teacher)
    inside = (index >= 0) & (index < main.shape[1])
    if teacher_mask is not None:
        ok = torch.zeros_like(inside)
        ok[inside] = teacher_mask.bool().cpu()[inside.nonzero()[:, 0], index[inside]]
        inside &= ok
    if student_mask is not None:
        inside &= student_mask.bool().cpu()[:, :student_length]
    index = torch.where(inside, index, -1)
    aligned &= inside
    b, s = aligned.nonzero(as_tuple=True)
    ids = torch.arange(k).expand(*aligned.shape, k).clone()
    logprobs = torch.full((*aligned.shape, k), -math.log(student_rows))
    tail = torch.full(aligned.shape, math.log1p(-k / student_rows) if k < student_rows else -math.inf)
    dropped = torch.zeros(aligned.shape)
    done = 0
    for rows in _rows(teacher, (b, index[b, s]), chunk):
        sig, lost = map_rows(rows, token_map, student_rows, k)
        part = (b[done : done + len(lost)], s[done : done + len(lost)])
        ids[part], logprobs[part], tail[part] = sig.ids.cpu(), sig.logprobs.cpu(), sig.tail.cpu()
        dropped[part] = lost.cpu()
        done += len(lost)
    mask = aligned & (dropped < 1.0)
    signal = SparseSignal(ids=ids, logprobs=logprobs, tail=tail, vocab_size=student_rows).to(main.device)
    dev = main.device
    return CrossSignal(signal, mask.to(dev), torch.where(mask, dropped, 0.0).to(dev), index.to(dev))


def uld_rows(student_logits: Tensor, teacher_logprobs: Tensor, T: float = 1.0) -> Tensor:
    """Per-row ULD loss (n,): Σ_i |sorted p_s(i) − sorted p_t(i)|, the shorter vocabulary padded with zeros.

    Differentiable with respect to ``student_logits`` (n, V_s); ``teacher_logprobs`` (n, V_t) may be raw logits.
    """
    if student_logits.shape[0] != teacher_logprobs.shape[0]:
        raise ShapeMismatchError(
            f"ULD pairs rows: student has {student_logits.shape[0]} rows, teacher {teacher_logprobs.shape[0]}"
        )
    p_s = torch.softmax(student_logits.float() / T, dim=-1).sort(dim=-1, descending=True).values
    with torch.no_grad():
        p_t = torch.softmax(teacher_logprobs.float() / T, dim=-1).sort(dim=-1, descending=True).values
    m = min(p_s.shape[-1], p_t.shape[-1])
    # Zero padding turns the extra sorted entries of the longer side into their plain sum.
    return (p_s[:, :m] - p_t[:, :m]).abs().sum(-1) + p_s[:, m:].sum(-1) + p_t[:, m:].sum(-1)


def uld_rest_rows(student_logits: Tensor, teacher: Any, cross: CrossSignal, T: float = 1.0, chunk: int = 128) -> Tensor:
    """ULD (n,) at the student positions without a mapped target, each against its paired teacher position."""
    b, s = cross.rest.nonzero(as_tuple=True)
    out, done = [], 0
    for rows in _rows(teacher, (b, cross.teacher_index[b, s]), chunk):
        part = student_logits[b[done : done + len(rows)], s[done : done + len(rows)]]
        out.append(uld_rows(part, rows, T))
        done += len(rows)
    return torch.cat(out) if out else student_logits.new_zeros(0)
