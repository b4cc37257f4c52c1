"""docs/reliability.md is generated from the committed trial log, and the trial log records what tests report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdforge.bench.readme.reliability import merge_rows, render_reliability, update_reliability_doc
from reliability_log import LOG_ENV, ReliabilityLog

ROOT = Path(__file__).resolve().parents[1]


def test_committed_reliability_page_is_what_the_committed_trials_render(tmp_path: Path) -> None:
    results = ROOT / "benchmarks" / "results"
    doc = tmp_path / "reliability.md"
    doc.write_text((ROOT / "docs" / "reliability.md").read_text())
    # Unchanged results give the same bytes: nothing on the page was typed by hand.
    assert update_reliability_doc(results, doc) is False


def test_rows_of_one_fault_merge_their_trials_and_keep_each_behaviour_once() -> None:
    rows = [
        {"area": "corruption", "fault": "shard", "behaviour": "refused", "lost": "none", "trials": 5, "test": "a"},
        {"area": "corruption", "fault": "shard", "behaviour": "refused", "lost": "none", "trials": 3, "test": "b"},
        {"area": "kill anywhere", "fault": "run", "behaviour": "resumed", "lost": "none", "trials": 20, "test": "c"},
    ]
    merged = merge_rows(rows)
    assert [(m["fault"], m["trials"], m["behaviour"], m["tests"]) for m in merged] == [
        ("shard", 8, ["refused"], ["a", "b"]),
        ("run", 20, ["resumed"], ["c"]),
    ]
    data = {"rows": rows, "tests": {"passed": 3, "failed": [], "skipped": 0}, "date": "2026-12-03", "commit": "x"}
    page = render_reliability({**data, "command": "pytest", "wall_s": 1.0, "machine": {"cpus": 2}})
    assert "**28 trials in 2 kinds of fault; data lost: none.**" in page
    assert page.index("## Kill anywhere") < page.index("## Corruption")  # the order, not the log's


def test_trial_log_appends_one_json_line_per_record_only_when_switched_on(tmp_path: Path, monkeypatch) -> None:
    log = tmp_path / "trials.jsonl"
    monkeypatch.delenv(LOG_ENV, raising=False)
    ReliabilityLog("t").record("fuzz", "x", "y", trials=2)
    assert not log.exists()
    monkeypatch.setenv(LOG_ENV, str(log))
    ReliabilityLog("t").record("fuzz", "x", "y", trials=2)
    ReliabilityLog("u").record("fuzz", "x", "z", trials=1, lost="1 row")
    assert [json.loads(line)["trials"] for line in log.read_text().splitlines()] == [2, 1]
    with pytest.raises(ValueError, match="trials must be at least 1"):
        ReliabilityLog("t").record("fuzz", "x", "y", trials=0)
