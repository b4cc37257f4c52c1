"""What the LLM-teacher benchmarks share: Reuters R8 as files, its label set, and the real servers of the tests."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from kdforge.data.text import R8_LABELS, export_tab_files

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llm_servers import start_llama_server

# Plain words for the labels (Gemma-3-270M: 0.05 with the raw names, 0.75 with these + calibration; offline assets).
LABELS = R8_LABELS
# A base model continues text: the article, then "Topic:" and the label word.
BASE_PROMPT = {"instruction": "", "template": "Article: {text}\nTopic:", "max_chars": 1000}
CHAT_PROMPT = {
    "instruction": "Classify the news article into one of these topics: {labels}. Answer with the topic only.",
    "template": "Article: {text}\nTopic:",
    "max_chars": 1000,
}


def bench_folder(name: str) -> Path:
    """A benchmark's working folder, kept between runs so its request cache makes a re-run cheap."""
    folder = Path(os.environ.get("KDFORGE_BENCH_WORK", "~/.cache/kdforge/bench")).expanduser() / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def r8_files(folder: Path, sizes: dict[str, tuple[str, int | None]], seed: int = 0) -> dict[str, Path]:
    """Seeded Reuters R8 subsets as JSONL files."""
    return export_tab_files("reuters-r8", folder, sizes, seed=seed)


def server(gguf: Path, threads: int = 2, chat_format: str | None = None, alias: str = "smollm2") -> Any:
    """A llama.cpp server on ``gguf`` answering as ``alias`` (stop it with .stop())."""
    log = Path(tempfile.mkdtemp(prefix="kdforge-bench-")) / "llama.log"
    return start_llama_server(gguf, n_threads=threads, chat_format=chat_format, alias=alias, log_path=log)


def student_recipe(name: str, train: Path, test: Path, seed: int, teacher: dict | None, objectives: dict) -> dict:
    """A text_bag student on a training file (the teacher's labels or gold), tested on gold R8 test labels."""
    tree = {
        "name": name,
        "seed": seed,
        "data": {
            "name": "files",
            "params": {"train": str(train), "test": str(test), "labels": list(LABELS), "tokenizer": "minilm",
                       "max_len": 128, "val_fraction": 0.0, "label_column": "label"},
            "batch_size": 32,
        },
        "student": {"name": "text_bag"},
        "objectives": objectives,
        "train": {"epochs": 15, "optimizer": {"name": "adamw", "lr": 0.003}, "log_every": 1000},
        "profile": False,
    }  # fmt: skip
    if teacher is not None:
        tree["teacher"] = teacher
    return tree
