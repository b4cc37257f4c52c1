"""Rewrite the README between its results markers from the committed JSON under a results folder."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdforge.bench.readme import features, fmnist, llm, store, suites
from kdforge.errors import ConfigError
from kdforge.files import atomic_write_text

START, END = "<!-- results:start -->", "<!-- results:end -->"

Section = Callable[[dict[str, Any]], list[str]]
# (results file stem, renderer), in README order. A file that does not exist yet leaves its section out.
SECTIONS: tuple[tuple[str, Section], ...] = (
    ("demo_time", fmnist.demo_section),
    ("fmnist_methods", fmnist.methods_section),
    ("label_scarce", fmnist.label_scarce_section),
    ("overhead", fmnist.overhead_section),
    ("store_throughput", store.store_section),
    ("sparse_codecs", store.sparse_section),
    ("sparse_memory", store.sparse_memory_section),
    ("shard_format", store.shard_format_section),
    ("store_views", store.views_section),
    ("store_streaming", store.streaming_section),
    ("text_store", store.text_section),
    ("files_text", store.files_text_section),
    ("files_images", store.files_images_section),
    ("ddp", fmnist.ddp_section),
    ("llm_annotate", llm.llm_annotate_section),
    ("llm_teach", llm.llm_teach_section),
    ("llm_throughput", llm.llm_throughput_section),
    ("llm_loss_memory", llm.llm_loss_memory_section),
    ("llm_vocab", llm.llm_vocab_section),
    ("llm_quality", llm.llm_quality_section),
    ("llm_cross_quality", llm.llm_cross_quality_section),
    ("llm_miniplm", llm.llm_miniplm_section),
    ("strategies", fmnist.strategies_section),
    ("features", features.features_section),
    ("features_text", features.features_text_section),
)


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{str(path)!r} is not valid JSON ({err.msg} at line {err.lineno}); expected a results file"
        ) from None


def render_results(results: str | Path) -> str:
    """The results block (markers included) for the JSON files under ``results``."""
    root = Path(results)
    if not root.is_dir():
        raise ConfigError(f"results folder {str(root)!r} does not exist; expected benchmarks/results")
    lines: list[str] = []
    for stem, section in SECTIONS:
        path = root / f"{stem}.json"
        if path.is_file():
            lines += section(_load(path))
    suite_lines = suites.suites_section(root)
    if suite_lines and lines and lines[-1]:
        lines.append("")  # a heading glued to the paragraph above would not render as a heading
    lines += suite_lines
    return "\n".join([START, *lines, END])


def update_readme(readme: str | Path, results: str | Path) -> bool:
    """Replace the README's results block; True when the file changed (an unchanged folder gives the same bytes)."""
    path = Path(readme)
    if not path.is_file():
        raise ConfigError(f"README {str(path)!r} does not exist")
    text = path.read_text()
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise ConfigError(f"{str(path)!r} has no '{START}' ... '{END}' block to rewrite")
    block = render_results(results)
    new = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, count=1, flags=re.S)
    if new == text:
        return False
    atomic_write_text(path, new)
    return True
