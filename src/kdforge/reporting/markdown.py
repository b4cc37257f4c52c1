"""report.md: the same sections as the HTML page, figures referenced as PNG files beside it."""

from __future__ import annotations

import re

from kdforge.reporting.document import Block, Code, Document, Figure, Paragraph, Table


def render_markdown(doc: Document) -> str:
    """Markdown text; a figure is ``![caption](file.png)`` relative to the report's folder."""
    lines = [f"# {_inline(doc.title)}", ""]
    for section in doc.sections:
        lines += [f"## {_inline(section.title)}", ""]
        for block in section.blocks:
            lines += [*_block(block), ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """One line of text that Markdown shows as written: no line breaks, no HTML, no emphasis or link syntax."""
    text = " ".join(str(text).split())
    return re.sub(r"([\\`*_\[\]<>|#!])", r"\\\1", text)


def _block(block: Block) -> list[str]:
    if isinstance(block, Table):
        return [
            "| " + " | ".join(_inline(c) for c in block.columns) + " |",
            "|" + "|".join("---" for _ in block.columns) + "|",
            *("| " + " | ".join(_inline(c) for c in row) + " |" for row in block.rows),
        ]
    if isinstance(block, Figure):
        caption = _inline(block.caption)
        return [f"![{caption}]({block.file})", "", f"*{caption}*"]
    if isinstance(block, Code):
        # A fence longer than any backtick run in the text, so the text cannot close it.
        fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", block.text)), default=0))
        return [f"**{_inline(block.caption)}**", "", fence, block.text.rstrip("\n"), fence]
    assert isinstance(block, Paragraph)
    return [_inline(block.text)]
