"""Prompt/response pairs from the user's files as causal-LM rows: the loss falls on the response tokens only."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc
import torch
from torch import Tensor

from kdforge.data.base import ArrayDataset, DataBundle, fingerprint
from kdforge.data.files.labels import IGNORE
from kdforge.data.files.source import Source, check_path, read_source
from kdforge.data.files.splits import carve, check_carved
from kdforge.data.files.tokenize import check_text, load_tokenizer
from kdforge.errors import ConfigError
from kdforge.models.hf.tokenizer import tokenizer_folder

if TYPE_CHECKING:
    from kdforge.data.files.params import Params

SPLITS = ("train", "val", "test")


@dataclass
class PairsBundle(DataBundle):
    """A DataBundle of prompt/response rows that also says how many responses were cut to ``max_len`` per split."""

    truncated: dict[str, int] = field(default_factory=dict)


@dataclass
class Rows:
    """One source's rows laid out: ids, next-token labels, attention mask, and which responses were truncated."""

    ids: Tensor  # (n, max_len) long
    labels: Tensor  # (n, max_len) long, IGNORE off the response
    mask: Tensor  # (n, max_len) bool
    cut: Tensor  # (n,) bool


def check_pair_columns(prompt_column: str | None, response_column: str | None) -> tuple[str, str]:
    """Both columns or neither: one alone fails naming the missing key."""
    if prompt_column is None or response_column is None:
        given, missing = (
            ("prompt_column", "response_column") if prompt_column is not None else ("response_column", "prompt_column")
        )
        raise ConfigError(
            f"data.params.{missing}: required with data.params.{given} (prompt/response pairs need both columns)"
        )
    if prompt_column == response_column:
        raise ConfigError(
            f"data.params.response_column={response_column!r} is also the prompt_column; expected two columns"
        )
    return prompt_column, response_column


def layout(
    prompt: list[int], response: list[int], eos: int | None, max_len: int, pad: int
) -> tuple[Tensor, Tensor, Tensor, bool]:
    """(ids, labels, mask, truncated) of one row: prompt + response (+ eos), right-padded to ``max_len``.

    Position j is labelled with token j + 1 only where that token belongs to the response (eos included).
    """
    # The eos closes every complete response so that the student learns to stop; a truncated one loses it.
    row = prompt + response + ([eos] if eos is not None else [])
    truncated = len(row) > max_len
    row = row[:max_len]
    ids = torch.full((max_len,), pad, dtype=torch.long)
    ids[: len(row)] = torch.tensor(row, dtype=torch.long)
    mask = torch.zeros(max_len, dtype=torch.bool)
    mask[: len(row)] = True
    labels = torch.full((max_len,), IGNORE, dtype=torch.long)
    start = len(prompt) - 1  # the last prompt position predicts the first response token
    labels[start : len(row) - 1] = ids[start + 1 : len(row)]
    return ids, labels, mask, truncated


def _texts(source: Source, column: str) -> list[str]:
    """The column's strings; a missing or blank cell fails naming file, row and column."""
    check_text(source, column)  # exists (else lists the columns found), holds strings, no null
    col = source.column(column)
    blank = pc.equal(pc.utf8_trim_whitespace(col), "")
    if pc.any(blank).as_py():
        row = pc.index(blank, True).as_py()
        where = f"{source.key}={str(source.path)!r} row {row + 1} (sample id {row})"
        raise ConfigError(f"{where}: empty text in {column!r}; expected a prompt and a response in every row")
    return col.to_pylist()


def _rows(source: Source, columns: tuple[str, str], tok: Any, max_len: int) -> Rows:
    """Tokenize and lay out every row of ``source``; a prompt that leaves no room for a response fails."""
    prompts, responses = (_texts(source, c) for c in columns)
    # verbose=False: rows are cut to max_len below, so the tokenizer's model_max_length warning would only mislead.
    prompt_ids = tok(prompts, verbose=False)["input_ids"]
    response_ids = tok(responses, add_special_tokens=False, verbose=False)["input_ids"]
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    laid = []
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        where = f"{source.key}={str(source.path)!r} row {i + 1} (sample id {i})"
        if len(p) >= max_len:
            raise ConfigError(
                f"{where}: the prompt in {columns[0]!r} is {len(p)} tokens and max_len={max_len} leaves no room for "
                "a response (a prompt longer than the context); raise data.params.max_len or shorten the prompt"
            )
        if not r and eos is None:
            raise ConfigError(f"{where}: the response in {columns[1]!r} is no tokens at all; expected text to learn")
        laid.append(layout(p, r, eos, max_len, pad))
    ids, labels, mask, cut = zip(*laid, strict=True)
    return Rows(torch.stack(ids), torch.stack(labels), torch.stack(mask), torch.tensor(cut, dtype=torch.bool))


def _dataset(rows: Rows, positions: Tensor, split: str) -> ArrayDataset:
    """The rows at ``positions`` as one split; their sample ids are their row numbers in the file."""
    return ArrayDataset(
        rows.ids[positions],
        rows.labels[positions],
        indices=positions,
        split=split,
        fields={"attention_mask": rows.mask[positions]},
    )


def assemble_pairs(p: Params, prompt_column: str | None, response_column: str | None) -> PairsBundle:
    """Prompt/response rows as causal-LM splits held in memory: inputs, next-token labels on the response, mask.

    Tensors are (n, max_len) in memory, fine for prompt/response sets of instruction-tuning size. Responses cut
    to ``max_len`` are counted in ``bundle.truncated`` (per split) and warned about once.
    """
    columns = check_pair_columns(prompt_column, response_column)
    for key in ("image_column", "image_size"):
        if getattr(p, key) is not None:
            raise ConfigError(f"data.params.{key}={getattr(p, key)!r}: not used with prompt/response pairs; remove it")
    for name in SPLITS:  # cheap path checks for every split before reading any of them
        value = getattr(p, name)
        if value is not None and check_path(f"data.params.{name}", value)[1] == "images":
            raise ConfigError(
                f"data.params.{name}={value!r} is an image folder; prompt/response pairs need a table "
                "(.csv, .tsv, .jsonl, .json, .parquet or a save_to_disk folder)"
            )
    if p.tokenizer is None:
        raise ConfigError(
            f"data.params.tokenizer: required for prompt/response pairs ({p.train!r}); a local tokenizer or model "
            "folder, or 'minilm'"
        )
    tok = load_tokenizer(p.tokenizer)
    sources = {name: read_source(f"data.params.{name}", getattr(p, name)) for name in SPLITS if getattr(p, name)}
    for source in sources.values():  # every column check before any tokenizing
        for column in columns:
            source.column(column)
    rows = {name: _rows(source, columns, tok, p.max_len) for name, source in sources.items()}

    full = rows["train"]
    n = len(full.ids)
    val_fraction = p.val_fraction if "val" not in rows else 0.0
    test_fraction = p.test_fraction if "test" not in rows else 0.0
    positions = carve(None, n, val_fraction, test_fraction, p.seed)
    check_carved(positions, n, val_fraction, test_fraction)
    whole = {name: torch.arange(len(r.ids)) for name, r in rows.items()}
    picked = {
        "train": (full, positions[0]),
        "val": (rows["val"], whole["val"]) if "val" in rows else (full, positions[1]),
        "test": (rows["test"], whole["test"]) if "test" in rows else (full, positions[2]),
    }
    splits = {name: _dataset(r, pos, name) for name, (r, pos) in picked.items()}
    val = splits["val"] if "val" in rows or val_fraction > 0 else None
    truncated = {name: int(r.cut[pos].sum()) for name, (r, pos) in picked.items() if name != "val" or val}
    if any(truncated.values()):
        counts = ", ".join(f"{k} {v}" for k, v in truncated.items())
        warnings.warn(
            f"data.params.max_len={p.max_len} cuts responses short (their eos dropped); rows cut: {counts}",
            UserWarning,
            stacklevel=2,
        )
    folder = tokenizer_folder(p.tokenizer)
    return PairsBundle(
        train=splits["train"],
        val=val,
        test=splits["test"],
        num_classes=len(tok),
        input_shape=(p.max_len,),
        class_names=[],
        name="files",
        # Over each file's laid-out rows, not the carved splits: the data, not the seed or fractions.
        fingerprint=fingerprint("files/pairs", {k: [r.ids, r.labels, r.mask] for k, r in rows.items()}),
        tokenizer=None if folder is None else str(folder),
        truncated=truncated,
    )
