"""Models from Hugging Face: `hf` (a transformers folder, GGUF file or config) and `sentence_transformers`."""

from __future__ import annotations

from kdforge.models.hf import builder, sentence  # noqa: F401  (fill the registry)
from kdforge.models.hf.checks import check_tokenizer_fits, embedding_rows
from kdforge.models.hf.save import is_hf_student, load_hf_folder, save_hf_folder
from kdforge.models.hf.tokenizer import tokenizer_folder, tokenizer_name

HF_MODELS = ("hf", "sentence_transformers")  # registered models whose students are written as HF folders

__all__ = [
    "HF_MODELS",
    "check_tokenizer_fits",
    "embedding_rows",
    "is_hf_student",
    "load_hf_folder",
    "save_hf_folder",
    "tokenizer_folder",
    "tokenizer_name",
]
