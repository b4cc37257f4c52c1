"""`austen_lm`: Jane Austen's novels as causal-LM blocks of a Hugging Face tokenizer's ids (held-out book = test)."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdforge.data.austen import BOOKS, austen_novels
from kdforge.data.base import ArrayDataset, DataBundle, subset, train_val_split
from kdforge.errors import ConfigError
from kdforge.registry import DATASETS

# Short names for the tokenizers of the LLMs kdforge finds offline → their folders; kdforge.llm.assets fills it
# (the LLM layer knows where its converted models live; the data layer only asks).
TOKENIZER_FOLDERS: dict[str, Callable[[], Path]] = {}


def tokenizer_path(name: str) -> Path:
    """The folder of tokenizer ``name``: an alias (smollm2, gemma3) or a local transformers folder."""
    if name in TOKENIZER_FOLDERS:
        return TOKENIZER_FOLDERS[name]()
    folder = Path(name).expanduser()
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise ConfigError(
            f"data.params.tokenizer={name!r}: not a tokenizer folder (no tokenizer.json); expected a local "
            f"transformers folder, 'teacher', 'student' or one of {', '.join(TOKENIZER_FOLDERS)}"
        )
    return folder


def load_tokenizer(folder: Path) -> Any:
    """A fast transformers tokenizer from a local folder (never the hub), shared within a process: never mutate it."""
    resolved = Path(folder).expanduser().resolve()
    # Keyed by the files' sizes and times too, so a folder rewritten in place is read again.
    stats = {p.name: p.stat() for p in resolved.iterdir() if p.is_file()}
    stamp = tuple(sorted((name, st.st_size, st.st_mtime_ns) for name, st in stats.items()))
    return _load_tokenizer(resolved, stamp)


@functools.lru_cache(maxsize=8)
def _load_tokenizer(folder: Path, stamp: tuple[tuple[str, int, int], ...]) -> Any:
    """``load_tokenizer`` without the cache: parsing a 50k-262k token vocabulary takes a quarter second or more."""
    from transformers import AutoTokenizer

    from kdforge.models.hf.load import OFFLINE

    return AutoTokenizer.from_pretrained(str(folder), **OFFLINE)


def _cache_dir() -> Path:
    root = os.environ.get("KDFORGE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "kdforge") / "datasets" / "tokenized"


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]


def book_ids(folder: Path, root: str | None = None) -> dict[str, torch.Tensor]:
    """Each novel as one long tensor of token ids (and ``__vocab__``: the tokenizer's size), cached per tokenizer."""
    cache = _cache_dir() / f"austen-{_digest(folder)}.pt"
    if cache.is_file():
        try:
            return torch.load(cache, weights_only=True)
        except (RuntimeError, OSError, EOFError):
            pass  # a damaged cache file is rebuilt, never trusted
    tok = load_tokenizer(folder)
    books = {
        name: torch.tensor(tok(text)["input_ids"], dtype=torch.int32) for name, text in austen_novels(root).items()
    }
    books["__vocab__"] = torch.tensor([len(tok)])
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save(books, tmp)
    os.replace(tmp, cache)
    return books


def lm_blocks(ids: torch.Tensor, max_len: int) -> torch.Tensor:
    """Non-overlapping (n, max_len) blocks of a token stream (the incomplete tail is dropped)."""
    n = len(ids) // max_len
    return ids[: n * max_len].reshape(n, max_len).long()


def lm_dataset(blocks: torch.Tensor, split: str, offset: int = 0) -> ArrayDataset:
    """Full blocks as a causal-LM data set: input ids, all-ones attention mask, next-token labels (-100 at the end)."""
    labels = torch.full_like(blocks, -100)
    labels[:, :-1] = blocks[:, 1:]
    mask = torch.ones_like(blocks, dtype=torch.bool)
    ids = torch.arange(offset, offset + len(blocks), dtype=torch.int64)
    return ArrayDataset(blocks, labels, indices=ids, split=split, fields={"attention_mask": mask})


@DATASETS.register("austen_lm")
def austen_lm(
    tokenizer: str = "smollm2",
    max_len: int = 128,
    val_fraction: float = 0.05,
    test_book: str = "persuasion",
    seed: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    root: str | None = None,
) -> DataBundle:
    """Jane Austen's six novels in blocks of ``max_len`` tokens; ``test_book`` is held out as the test split."""
    if test_book not in BOOKS:
        raise ConfigError(f"data.params.test_book={test_book!r}; expected one of {', '.join(BOOKS)}")
    if not 2 <= max_len <= 1_000_000:
        raise ConfigError(f"data.params.max_len={max_len}; expected at least 2 tokens")
    folder = tokenizer_path(tokenizer)
    books = book_ids(folder, root)
    vocab = int(books.pop("__vocab__"))
    train_blocks = torch.cat([lm_blocks(ids, max_len) for name, ids in books.items() if name != test_book])
    test_blocks = lm_blocks(books[test_book], max_len)
    if test_limit is not None:
        test_blocks = test_blocks[:test_limit]
    train, val = train_val_split(lm_dataset(train_blocks, "train"), val_fraction, seed)
    if train_limit is not None:
        train = subset(train, list(range(min(train_limit, len(train)))))
    return DataBundle(
        train=train,
        val=val,
        test=lm_dataset(test_blocks, "test", offset=len(train_blocks)),
        num_classes=vocab,
        input_shape=(max_len,),
        class_names=[],
        name="austen_lm",
        fingerprint=f"austen-{_digest(folder)}-{max_len}-{test_book}",
        tokenizer=str(folder),
    )
