"""Data sets as in-memory tensors with stable sample ids; importing this registers the built-in ones."""

from kdforge.data import austen_lm, cifar100, digits, fashion_mnist, files, text
from kdforge.data.base import (
    ArrayDataset,
    DataBundle,
    collate_batch,
    load_dataset,
    make_loader,
    stratified_fraction,
    subset,
    train_val_split,
)

__all__ = [
    "ArrayDataset",
    "DataBundle",
    "austen_lm",
    "cifar100",
    "collate_batch",
    "digits",
    "fashion_mnist",
    "files",
    "load_dataset",
    "make_loader",
    "stratified_fraction",
    "subset",
    "text",
    "train_val_split",
]
