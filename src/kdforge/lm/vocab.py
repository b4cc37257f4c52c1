"""Which vocabulary case a teacher/student LM pair is in, detected at set-up, and the teacher → student id map.

Four cases: ``identical`` (same tokenizer, same head rows), ``padded_head`` (same tokenizer, heads padded to
different row counts: rows past the tokenizer are masked), ``shared`` (different tokenizers whose shared tokens
cover at least ``min_shared`` of the smaller vocabulary: shared tokens are mapped, the rest is reported as dropped
mass) and ``disjoint`` (too little in common: refused before training, pointing at SeqKD or ``kdforge annotate``).

Tokens are compared by the bytes they stand for, not their spelling: byte-level BPE writes a space as 'Ġ' and
encodes every byte as a printable character, SentencePiece writes it as '▁' and spells unknown bytes ``<0x0A>``;
both turn into b" the" / b"\\n" here. Special tokens (``<bos>``, ``<|im_end|>``) live in their own namespace: they
match only a special token of the same spelling, never the text it happens to look like, and the two tokenizers'
end-of-sequence tokens match each other by role.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any, Literal

import torch
from torch import Tensor

from kdforge.errors import ConfigError

Case = Literal["identical", "padded_head", "shared", "disjoint"]
Key = tuple[str, Any]  # ("text", bytes) or ("special", spelling)

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# Settings that change how a tokenizer pads or truncates a batch, not which ids it produces.
_BATCH_SETTINGS = ("truncation", "padding")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character → byte table that byte-level BPE vocabularies are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _backend(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` behind a transformers fast tokenizer (or the tokenizer itself)."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not hasattr(backend, "get_vocab") or not hasattr(backend, "get_added_tokens_decoder"):
        raise ConfigError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; vocabulary alignment needs a `tokenizers` "
            "Tokenizer or a transformers fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))"
        )
    return backend


def _decoder_spec(backend: Any) -> str:
    """The decoder's JSON, or '' when the tokenizer has none."""
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return ""
    try:
        return decoder.__getstate__().decode("utf-8", "replace")
    except (AttributeError, TypeError):
        return repr(decoder)


@dataclass(frozen=True)
class _Vocab:
    """One tokenizer's ids, each with the key it is matched by, and each key's preferred id."""

    size: int  # number of ids the tokenizer can produce
    keys: dict[int, Key]
    id_of: dict[Key, int]


# Reading a 262k-token vocabulary takes about a second; a tokenizer cannot change without changing its size.
_READ: weakref.WeakKeyDictionary[Any, tuple[tuple[int, Any], _Vocab]] = weakref.WeakKeyDictionary()


def _read_vocab(tokenizer: Any) -> _Vocab:
    """Keys of every id of ``tokenizer``: the bytes a text token stands for, the spelling of a special token."""
    backend = _backend(tokenizer)
    stamp = (backend.get_vocab_size(with_added_tokens=True), getattr(tokenizer, "eos_token_id", None))
    cached = _READ.get(backend)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    read = _read_vocab_uncached(tokenizer, backend)
    _READ[backend] = (stamp, read)
    return read


def _read_vocab_uncached(tokenizer: Any, backend: Any) -> _Vocab:
    """``_read_vocab`` without the cache."""
    vocab: dict[str, int] = backend.get_vocab(with_added_tokens=True)
    added = backend.get_added_tokens_decoder()
    spec = _decoder_spec(backend)
    byte_level = '"ByteLevel"' in spec
    byte_fallback = "ByteFallback" in spec
    metaspace = "▁" in spec or '"Metaspace"' in spec
    table = _byte_decoder()

    keys: dict[int, Key] = {}
    id_of: dict[Key, int] = {}
    best: dict[Key, int] = {}  # rank of the id a key maps to; when several ids share a key the lowest rank wins
    for token, i in sorted(vocab.items(), key=lambda item: item[1]):
        extra = added.get(i)
        if extra is not None and extra.special:
            key, rank = ("special", extra.content), 0
        elif extra is not None:  # matched before the model, so the tokenizer emits it for its text: literal
            key, rank = ("text", extra.content.encode("utf-8")), 0
        elif byte_fallback and (m := _BYTE_FALLBACK.fullmatch(token)):
            key, rank = ("text", bytes([int(m.group(1), 16)])), 2  # used only for bytes no token covers
        elif byte_level and all(c in table for c in token):
            key, rank = ("text", bytes(table[c] for c in token)), 1
        else:
            key, rank = ("text", (token.replace("▁", " ") if metaspace else token).encode("utf-8")), 1
        keys[i] = key
        if rank < best.get(key, 3):
            best[key], id_of[key] = rank, i
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int) and eos in keys:
        id_of[("eos", None)] = eos
    return _Vocab(len(vocab), keys, id_of)


def _same_tokenizer(teacher: Any, student: Any) -> bool:
    """Same ids for the same text: equal vocabularies and equal tokenization settings."""
    a, b = _backend(teacher), _backend(student)
    if a is b:
        return True
    if a.get_vocab_size(with_added_tokens=True) != b.get_vocab_size(with_added_tokens=True):
        return False
    serialised = a.to_str(), b.to_str()
    if serialised[0] == serialised[1]:
        return True  # the same file loaded twice (the usual case): no need to parse 50k-262k tokens of JSON
    if a.get_vocab(with_added_tokens=True) != b.get_vocab(with_added_tokens=True):
        return False

    def settings(text: str) -> dict[str, Any]:
        return {k: v for k, v in json.loads(text).items() if k not in _BATCH_SETTINGS}

    return settings(serialised[0]) == settings(serialised[1])


def check_head(tokenizer: Any, rows: int, side: str = "teacher") -> None:
    """Raise ConfigError when ``tokenizer`` can produce ids that its model's LM head (``rows`` rows) has no row for."""
    # Only the ids are needed here: reading every token's bytes (_read_vocab) would cost ~0.3 s per 50k tokens.
    spelled = _backend(tokenizer).get_vocab(with_added_tokens=True)
    max_id = max(spelled.values(), default=-1)
    if max_id < rows:
        return
    first = min(i for i in spelled.values() if i >= rows)
    raise ConfigError(
        f"the {side} tokenizer does not match its model: it has {len(spelled)} tokens (ids up to {max_id}) but "
        f"the model's LM head has {rows} rows; id {first} ({_spelling(spelled, first)!r}) is the first without a row "
        "(load the tokenizer saved with this model)"
    )


def _spelling(vocab: dict[str, int], i: int) -> str:
    return next((t for t, j in vocab.items() if j == i), "?")


@dataclass(frozen=True)
class VocabReport:
    """What the set-up found: the case, head rows and tokenizer sizes of both sides, and what they share."""

    case: Case
    teacher_rows: int  # LM head rows (logits width)
    student_rows: int
    teacher_tokens: int  # ids the tokenizer can produce
    student_tokens: int
    shared: int  # distinct tokens (by the bytes they stand for, or special spelling) present on both sides
    teacher_shared_fraction: float  # teacher ids that have a student id
    student_shared_fraction: float  # student ids that some teacher id maps to
    min_shared: float

    @property
    def overlap(self) -> float:
        """Shared tokens as a fraction of the smaller vocabulary: what ``min_shared`` is compared with."""
        return self.shared / max(1, min(self.teacher_tokens, self.student_tokens))

    def describe(self) -> str:
        """One paragraph for a person reading the set-up log."""
        sizes = (
            f"teacher {self.teacher_tokens:,} tokens / {self.teacher_rows:,} head rows, "
            f"student {self.student_tokens:,} tokens / {self.student_rows:,} head rows"
        )
        if self.case == "identical":
            return f"Vocabularies are identical ({sizes}): teacher logits are used as they are."
        if self.case == "padded_head":
            pads = [
                f"{side} rows {tokens:,}–{rows - 1:,}"
                for side, tokens, rows in (
                    ("teacher", self.teacher_tokens, self.teacher_rows),
                    ("student", self.student_tokens, self.student_rows),
                )
                if rows > tokens
            ]
            return (
                f"Same tokenizer, LM heads padded to different sizes ({sizes}): the padding rows "
                f"({', '.join(pads) or 'none'}) belong to no token and are masked; no token is dropped."
            )
        shared = (
            f"{self.shared:,} tokens are shared ({self.teacher_shared_fraction:.1%} of the teacher's ids, "
            f"{self.student_shared_fraction:.1%} of the student's)"
        )
        if self.case == "shared":
            return (
                f"Different tokenizers ({sizes}); {shared}. At positions where both tokenizations end at the same "
                "character, the teacher's next-token distribution is mapped onto the shared tokens and renormalised; "
                "the mass on teacher-only tokens is dropped and reported."
            )
        return (
            f"Different tokenizers with too little in common ({sizes}); {shared}, {self.overlap:.1%} of the smaller "
            f"vocabulary, below the {self.min_shared:.0%} needed: logits cannot be aligned. Distil from "
            "teacher-generated text (SeqKD) or label the data with `kdforge annotate` instead."
        )

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON types, with the overlap and the description."""
        return {**asdict(self), "overlap": self.overlap, "description": self.describe()}


def compare_vocabularies(
    teacher_tokenizer: Any, student_tokenizer: Any, teacher_rows: int, student_rows: int, min_shared: float = 0.5
) -> VocabReport:
    """Detect the vocabulary case of a teacher/student pair; ConfigError when a tokenizer outgrows its LM head."""
    check_head(teacher_tokenizer, teacher_rows, "teacher")
    check_head(student_tokenizer, student_rows, "student")
    if _same_tokenizer(teacher_tokenizer, student_tokenizer):
        case: Case = "identical" if teacher_rows == student_rows else "padded_head"
        size = len(_backend(teacher_tokenizer).get_vocab(with_added_tokens=True))
        return VocabReport(case, teacher_rows, student_rows, size, size, size, 1.0, 1.0, min_shared)
    t, s = _read_vocab(teacher_tokenizer), _read_vocab(student_tokenizer)
    mapped = _map_ids(t, s)
    shared = len({t.keys[i] for i in mapped})
    report = VocabReport(
        "shared",
        teacher_rows,
        student_rows,
        t.size,
        s.size,
        shared,
        len(mapped) / max(1, t.size),
        len(set(mapped.values())) / max(1, s.size),
        min_shared,
    )
    if report.overlap < min_shared:
        report = replace(report, case="disjoint")
    return report


def check_alignable(report: VocabReport) -> None:
    """Raise ConfigError, before training, when the report's vocabularies cannot be aligned."""
    if report.case != "disjoint":
        return
    raise ConfigError(
        f"cannot align the teacher's vocabulary ({report.teacher_tokens} tokens, {report.teacher_rows} head rows) "
        f"with the student's ({report.student_tokens} tokens, {report.student_rows} head rows): they share "
        f"{report.shared} tokens, {report.overlap:.1%} of the smaller vocabulary, expected at least "
        f"{report.min_shared:.0%}; distil from teacher-generated text (SeqKD) or label the data with "
        "`kdforge annotate` instead"
    )


def _map_ids(teacher: _Vocab, student: _Vocab) -> dict[int, int]:
    """Teacher id → student id for every teacher id whose key the student has."""
    out = {i: student.id_of[k] for i, k in teacher.keys.items() if k in student.id_of}
    t_eos, s_eos = teacher.id_of.get(("eos", None)), student.id_of.get(("eos", None))
    if t_eos is not None and s_eos is not None:
        out[t_eos] = s_eos
    return out


def token_map(teacher_tokenizer: Any, student_tokenizer: Any, teacher_rows: int) -> Tensor:
    """LongTensor (teacher_rows,): the student id of each teacher id, −1 where the student has none (or a pad row)."""
    check_head(teacher_tokenizer, teacher_rows, "teacher")
    out = torch.full((teacher_rows,), -1, dtype=torch.long)
    if _same_tokenizer(teacher_tokenizer, student_tokenizer):
        ids = torch.tensor(sorted(_backend(teacher_tokenizer).get_vocab(with_added_tokens=True).values()))
        out[ids] = ids
        return out
    mapped = _map_ids(_read_vocab(teacher_tokenizer), _read_vocab(student_tokenizer))
    if mapped:
        out[torch.tensor(list(mapped))] = torch.tensor(list(mapped.values()))
    return out


def padding_rows(rows: int, tokens: int) -> Tensor:
    """Bool (rows,): True at LM-head rows that no token id reaches (ids ≥ ``tokens``)."""
    if tokens > rows:
        raise ConfigError(f"a tokenizer of {tokens} tokens does not fit an LM head of {rows} rows")
    return torch.arange(rows) >= tokens


def fit_head(logits: Tensor, rows: int, tokens: int) -> Tensor:
    """Teacher ``logits`` (…, R) resized to ``rows`` columns: real token columns kept, padding columns set to −inf.

    For the teacher side only: a student's −inf column would make reverse KL NaN and a sparse tail infinite, so a
    student's padding columns are either left to learn ~0 probability or sliced off with ``[..., :tokens]``.
    """
    width = logits.shape[-1]
    if width < tokens or rows < tokens:
        raise ConfigError(
            f"cannot fit logits of width {width} to {rows} rows: both must cover the tokenizer's {tokens} tokens "
            "(a vocabulary is never truncated)"
        )
    out = logits.new_full((*logits.shape[:-1], rows), -torch.inf)
    out[..., :tokens] = logits[..., :tokens]
    return out
