"""Run the reliability tests with their trial log on, keep the trials as JSON, and regenerate docs/reliability.md.

    .venv/bin/python benchmarks/reliability.py            # run the tests, write results/reliability.json, the page
    .venv/bin/python benchmarks/reliability.py --render   # only regenerate the page from the committed JSON

Each reliability test records the faults it injected (tests/reliability_log.py); this script collects those records
with pytest's own pass/fail/skip counts, so the page shows only trials that really ran, and which tests failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from kdforge.bench.readme.reliability import update_reliability_doc

import common
from common import save

ROOT = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/test_kill_anywhere.py",
    "tests/test_corruption.py",
    "tests/test_untrusted_inputs.py",
    "tests/test_secrets.py",
    "tests/test_fuzz.py",
    "tests/test_tensor_guards.py",
    "tests/test_llm_cache.py",
    "tests/test_llm_annotate.py::test_two_processes_annotate_one_data_set_through_one_cache",
    "tests/test_lm_sources.py::test_a_damaged_response_cache_is_refused_in_one_line_and_left_as_it_is",
]
DOC = ROOT / "docs" / "reliability.md"
RESULTS = ROOT / "benchmarks" / "results"


def _outcomes(junit: Path) -> dict[str, object]:
    """Passed / skipped counts, failed test ids and each test's seconds from pytest's JUnit XML."""
    passed, skipped, failed, seconds = 0, 0, [], {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        seconds[name] = round(float(case.get("time") or 0.0), 1)
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    return {"passed": passed, "skipped": skipped, "failed": failed, "seconds": seconds}


def run_tests(tests: list[str]) -> dict[str, object]:
    """Run ``tests`` with the trial log on; the records, the outcomes and the wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        log, junit = Path(tmp) / "trials.jsonl", Path(tmp) / "junit.xml"
        env = {**os.environ, "KDFORGE_RELIABILITY_LOG": str(log), "KDFORGE_REQUIRE_LLM_SERVERS": "1"}
        # Two workers, as `make test` runs them; the log is appended line by line, so both can write it.
        options = ["-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "worksteal", f"--junitxml={junit}"]
        command = [sys.executable, "-m", "pytest", *options, *tests]
        start = time.monotonic()
        subprocess.run(command, cwd=ROOT, env=env, check=False)
        wall = time.monotonic() - start
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        outcomes = _outcomes(junit) if junit.is_file() else {"passed": 0, "skipped": 0, "failed": ["(pytest crashed)"]}
    return {"rows": rows, "tests": outcomes, "wall_s": wall, "command": "pytest " + " ".join(tests)}


def main() -> None:
    """Run (unless --render), save the JSON, rewrite the page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", action="store_true", help="only regenerate docs/reliability.md")
    parser.add_argument("tests", nargs="*", default=TESTS, help="test files (default: every reliability test)")
    args = parser.parse_args()
    if not args.render:
        result = run_tests(args.tests)
        record = {"date": time.strftime("%Y-%m-%d"), "commit": common.commit(), "machine": common.machine(), **result}
        save("reliability", record)
    changed = update_reliability_doc(RESULTS, DOC)
    print(f"{DOC}: {'rewritten' if changed else 'unchanged'}")


if __name__ == "__main__":
    main()
