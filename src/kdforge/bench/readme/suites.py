"""README tables of the suites run by `kdforge bench` (one per results/<suite>/summary.json)."""

from __future__ import annotations

import json
from pathlib import Path

from kdforge.bench.readme.markdown import table
from kdforge.bench.results import SUMMARY, summary_rows
from kdforge.errors import ConfigError

ORDER = ("fashion-mnist", "text", "llm", "overhead", "cifar100")


def suites_section(root: Path) -> list[str]:
    """A heading, the setting and a mean ± std table per suite summary found under ``root``."""
    names = [n for n in ORDER if (root / n / SUMMARY).is_file()]
    # Folders named suite+hash hold runs with --set overrides (smoke tests, other budgets): never README material.
    others = {p.parent.name for p in root.glob(f"*/{SUMMARY}")} - set(ORDER)
    names += sorted(n for n in others if "+" not in n)
    lines: list[str] = []
    for name in names:
        path = root / name / SUMMARY
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{str(path)!r} is not valid JSON ({err.msg} at line {err.lineno})") from None
        if not summary.get("cells"):
            continue
        header, rows = summary_rows(summary)
        seeds = sorted({len(e["seeds"]) for e in summary["cells"]})
        lines += [
            f"### Suite `{name}`",
            "",
            f"{summary['description']}. Mean ± std over {'/'.join(map(str, seeds))} seed(s); "
            f"`kdforge bench {name} --seeds N` reruns the missing cells and rewrites this table.",
            "",
            *table(header, rows),
            "",
        ]
    return lines
