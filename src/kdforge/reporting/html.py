"""report.html: one self-contained page (inline CSS, PNGs as data URIs, no script, no external URL)."""

from __future__ import annotations

import base64
from html import escape

from kdforge.reporting.document import Block, Code, Document, Figure, Paragraph, Table

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td:first-child, td:nth-child(2), th:first-child, th:nth-child(2) { text-align: left; }
table.text td { text-align: left; white-space: pre-wrap; overflow-wrap: anywhere; max-width: 40rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: 0.8rem; overflow-x: auto; font-size: 0.82rem; }
nav a { margin-right: 1rem; }
"""


def render_html(doc: Document) -> str:
    """The page: every user-controlled string HTML-escaped, every figure embedded as base64 PNG."""
    nav = " ".join(f'<a href="#s{i}">{escape(s.title)}</a>' for i, s in enumerate(doc.sections, 1))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{escape(doc.title)}</title>",
        f"<style>{STYLE}</style>",
        # A data: favicon, so that the browser does not ask for /favicon.ico (a console error under file://).
        '<link rel="icon" href="data:,">',
        "</head>",
        "<body>",
        f"<h1>{escape(doc.title)}</h1>",
        f"<nav>{nav}</nav>",
    ]
    for i, section in enumerate(doc.sections, 1):
        parts.append(f'<section id="s{i}"><h2>{escape(section.title)}</h2>')
        parts += [_block(b) for b in section.blocks]
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _block(block: Block) -> str:
    if isinstance(block, Table):
        text = block.role != "results" and any(len(c) > 40 for row in block.rows for c in row)
        head = "".join(f"<th>{escape(c)}</th>" for c in block.columns)
        body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in block.rows)
        cls = f"{block.role} text" if text else block.role
        return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        alt = escape(block.caption)
        return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'
    if isinstance(block, Code):
        return f"<h3>{escape(block.caption)}</h3><pre>{escape(block.text)}</pre>"
    assert isinstance(block, Paragraph)
    return f"<p>{escape(block.text)}</p>"
