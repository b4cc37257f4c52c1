"""Tables that fit the console: too many columns split into groups that each fit, the key columns repeated in each.

A value is never cut: a column is at least as wide as its longest word, headings and prose wrap on words, and only
a single word wider than the whole console is folded onto a second line (never replaced by '…').
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table

# rich's default table: one space of padding either side of a cell and one rule after it, plus the left edge.
COLUMN_EXTRA = 3
EDGE = 1


def word_width(text: str) -> int:
    """Cells taken by the longest word of ``text``: the narrowest a column can be without breaking a word."""
    return max((cell_len(w) for w in text.split()), default=0)


def line_width(text: str) -> int:
    """Cells taken by the longest line of ``text``: the width at which it needs no wrapping."""
    return max((cell_len(line) for line in text.splitlines()), default=0)


def column_groups(minimum: Sequence[int], width: int, keys: int = 1) -> list[list[int]]:
    """Column indices per table, each group led by the first ``keys`` columns (what names a row), as many following
    columns as fit ``width``."""
    keys = max(1, min(keys, len(minimum)))
    if len(minimum) <= keys:
        return [list(range(len(minimum)))]
    lead_columns = list(range(keys))
    lead = EDGE + sum(minimum[j] + COLUMN_EXTRA for j in lead_columns)
    groups, group, used = [], list(lead_columns), lead
    for j in range(keys, len(minimum)):
        need = minimum[j] + COLUMN_EXTRA
        if used + need > width and len(group) > keys:
            groups.append(group)
            group, used = list(lead_columns), lead
        group.append(j)
        used += need
    groups.append(group)
    return groups


def share_widths(minimum: Sequence[int], maximum: Sequence[int], room: int) -> list[int]:
    """Column widths summing to at most ``room``: each its minimum, then spare cells one at a time to the narrowest
    column still short of its maximum (leftmost first); below the minima the widest give way (their words fold)."""
    widths = list(minimum)
    while sum(widths) > room and max(widths, default=0) > 1:
        widths[widths.index(max(widths))] -= 1
    for _ in range(room - sum(widths)):
        wanting = [i for i, w in enumerate(widths) if w < maximum[i]]
        if not wanting:
            break
        widths[min(wanting, key=lambda i: widths[i])] += 1
    return widths


@dataclass
class FittedTable:
    """A table laid out for the width it is printed at (``rich`` calls ``__rich_console__`` with that width)."""

    title: str | None
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    justify: Sequence[str] | None = None  # per column: left | right | center (default left)
    show_header: bool = True
    caption: str | None = None
    keys: int = 1  # leading columns that name a row, repeated in every group

    def tables(self, width: int) -> list[Table]:
        """The rich tables (one per column group) that together show every cell within ``width`` columns."""
        n = len(self.headers)
        cells = [list(self.headers) if self.show_header else [""] * n, *(list(r) for r in self.rows)]
        minimum = [max(max(word_width(row[j]) for row in cells), 1) for j in range(n)]
        maximum = [max(max(line_width(row[j]) for row in cells), 1) for j in range(n)]
        # Headings unwrapped when that costs no extra group; otherwise as many columns per group as words allow.
        natural = column_groups(maximum, width, self.keys)
        tightest = column_groups(minimum, width, self.keys)
        groups = natural if len(natural) <= len(tightest) else tightest
        out = []
        for k, group in enumerate(groups):
            room = width - EDGE - COLUMN_EXTRA * len(group)
            widths = share_widths([minimum[j] for j in group], [maximum[j] for j in group], room)
            part = f" ({k + 1}/{len(groups)})" if len(groups) > 1 and self.title else ""
            table = Table(
                title=f"{self.title}{part}" if self.title else None,
                caption=self.caption if k == len(groups) - 1 else None,
                show_header=self.show_header,
            )
            for j, w in zip(group, widths, strict=True):
                justify = self.justify[j] if self.justify else "left"
                table.add_column(self.headers[j], justify=justify, width=w, overflow="fold")  # type: ignore[arg-type]
            for row in self.rows:
                table.add_row(*(row[j] for j in group))
            out.append(table)
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Render at the console's current width."""
        yield from self.tables(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        """As wide as the space given (each group fits it)."""
        return Measurement(1, options.max_width)


def fitted(
    title: str | None,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    justify: Sequence[str] | None = None,
    *,
    show_header: bool = True,
    caption: str | None = None,
    keys: int = 1,
) -> FittedTable:
    """A table of strings that fits whatever console prints it, splitting its columns into groups if needed."""
    if any(len(r) != len(headers) for r in rows):
        raise ValueError(f"every row needs {len(headers)} cells, one per heading")
    if justify is not None and len(justify) != len(headers):
        raise ValueError(f"justify needs {len(headers)} entries, one per heading")
    return FittedTable(title, list(headers), [list(r) for r in rows], justify, show_header, caption, keys)
