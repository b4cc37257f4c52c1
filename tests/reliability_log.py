"""The fault trials the reliability tests run, recorded for docs/reliability.md.

A test records each fault it tried (what was done, what kdforge did, what data was lost, how many trials) through
the ``reliability`` fixture. Normally the records are dropped; `benchmarks/reliability.py` sets
KDFORGE_RELIABILITY_LOG to a JSON-lines file, runs these tests, and turns the lines into the documented table, so
the table always comes from trials that really ran.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

LOG_ENV = "KDFORGE_RELIABILITY_LOG"


@dataclass
class ReliabilityLog:
    """Collects the trials of one test; ``record`` appends one row to the log file when logging is on."""

    test: str
    rows: list[dict] = field(default_factory=list)

    def record(self, area: str, fault: str, behaviour: str, trials: int, lost: str = "none") -> None:
        """One row: the area (kill, corruption, ...), the fault tried, what kdforge did, trials run, data lost."""
        if trials < 1:
            raise ValueError(f"trials must be at least 1, got {trials}")
        row = {"area": area, "fault": fault, "behaviour": behaviour, "lost": lost, "trials": trials, "test": self.test}
        self.rows.append(row)
        target = os.environ.get(LOG_ENV)
        if target:
            # One short line per write with O_APPEND: tests running in parallel processes never interleave rows.
            with Path(target).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
