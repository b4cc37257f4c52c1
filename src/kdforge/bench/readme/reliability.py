"""docs/reliability.md from benchmarks/results/reliability.json: each fault tried, what happened, what was lost.

The JSON is written by benchmarks/reliability.py, which runs the reliability tests with a trial log switched on;
this module only turns it into Markdown, so the page can be regenerated (and checked) without running anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdforge.bench.readme.markdown import table
from kdforge.errors import ConfigError
from kdforge.files import atomic_write_text

# Areas in the order of the reliability issue; an area not listed here comes after them, alphabetically.
AREAS = (
    "kill anywhere",
    "corruption",
    "full disk",
    "no code execution",
    "secrets",
    "fuzz",
    "tensor guards",
    "concurrency",
    "load",
)


def merge_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (area, fault): trials summed, behaviours and losses kept once each in first-seen order."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["area"], row["fault"])
        entry = merged.setdefault(key, {**row, "behaviour": [], "lost": [], "trials": 0, "tests": []})
        entry["trials"] += int(row["trials"])
        for field, value in (("behaviour", row["behaviour"]), ("lost", row["lost"]), ("tests", row["test"])):
            if value not in entry[field]:
                entry[field].append(value)
    return list(merged.values())


def _area_order(area: str) -> tuple[int, str]:
    return (AREAS.index(area), "") if area in AREAS else (len(AREAS), area)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_reliability(data: dict[str, Any], soak: dict[str, Any] | None = None) -> str:
    """The whole page: a summary line, one table per area, the soak figures when given, and provenance."""
    rows = merge_rows(data["rows"])
    tests = data["tests"]
    trials = sum(r["trials"] for r in rows)
    lost = [r for r in rows if r["lost"] != ["none"]]
    lines = [
        "# Reliability: faults tried and what they cost",
        "",
        "Every row is a fault that the reliability tests inject into real kdforge commands (a real subprocess, a real",
        "SIGKILL, a damaged file on disk, a hostile file, a generated recipe), what kdforge did, and how much finished",
        "work was lost. This page is generated: `python benchmarks/reliability.py` runs the tests with a trial log",
        "switched on and writes `benchmarks/results/reliability.json`, from which this page is rendered; nothing here",
        "is typed by hand. The same tests run in `make test`.",
        "",
        f"**{trials:,} trials in {len(rows)} kinds of fault; data lost: "
        + ("none.**" if not lost else f"in {len(lost)} kind(s) — see the rows marked.**"),
        f"Tests: {tests['passed']} passed, {len(tests['failed'])} failed, {tests['skipped']} skipped.",
        "",
    ]
    if tests["failed"]:
        lines += ["Failed tests (their rows may be missing):", "", *(f"- `{t}`" for t in tests["failed"]), ""]
    for area in sorted({r["area"] for r in rows}, key=_area_order):
        body = [
            [_cell(r["fault"]), _cell("; ".join(r["behaviour"])), _cell(", ".join(r["lost"])), f"{r['trials']:,}"]
            for r in rows
            if r["area"] == area
        ]
        heading = f"## {area[0].upper()}{area[1:]}"
        lines += [heading, "", *table(["fault tried", "observed", "data lost", "trials"], body), ""]
    if soak is not None:
        lines += soak_section(soak)
    machine = data.get("machine", {})
    lines += [
        "---",
        f"Measured {data['date']} on {machine.get('cpus', '?')} CPU(s), torch {machine.get('torch', '?')}, "
        f"kdforge{' ' + machine['kdforge'] if 'kdforge' in machine else ''} (commit {data.get('commit', '?')}); "
        f"`{data['command']}` took {data['wall_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


PARTS = {
    "inprocess": "200 short runs back to back in one process",
    "subprocess": "200 `kdforge run` subprocesses back to back (the parent's figures)",
    "annotate": "one annotation job of 10,000 requests with injected 429 / 500 / timeouts (the job's figures)",
}
METERS = (("fds", "open files"), ("threads", "OS threads"), ("py_threads", "Python threads"), ("rss_mib", "RSS (MiB)"))


def soak_section(soak: dict[str, Any]) -> list[str]:
    """The load figures of benchmarks/results/soak.json (written by benchmarks/soak.py): per part, each meter at
    warm-up and at the end with their ratio, then every criterion and whether it held."""
    lines = ["## Load (soak)", ""]
    for name, part in soak.get("parts", {}).items():
        title = PARTS.get(name, name)
        quick = " (quick run)" if part.get("quick") else ""
        lines += [f"### {title[0].upper()}{title[1:]}{quick}", ""]
        body = [
            [label, f"{part['warmup'][key]:,}", f"{part['end'][key]:,}", f"{part['ratios'][key]:.3f}"]
            for key, label in METERS
            if key in part.get("ratios", {})
        ]
        lines += [*table(["meter", "after warm-up", "at the end", "ratio"], body), ""]
        extra = []
        if "retries_by_kind" in part:
            kinds = ", ".join(f"{k} {v:,}" for k, v in part["retries_by_kind"].items())
            lost, twice = part.get("lost", "?"), part.get("duplicated", "?")
            extra.append(f"retries: {kinds}; rows lost {lost}, duplicated {twice}")
        if "runs" in part:
            extra.append(f"{part.get('runs_completed', part['runs'])} runs")
        extra.append(f"wall {part['wall_s']:,.0f} s")
        checks = part.get("pass", {})
        held = sum(bool(v) for v in checks.values())
        failed = [k for k, v in checks.items() if not v]
        verdict = f"{held}/{len(checks)} criteria held" + (f"; **failed: {', '.join(failed)}**" if failed else "")
        lines += [f"{'; '.join(extra)}. {verdict} (`{part.get('command', 'benchmarks/soak.py')}`).", ""]
    return lines


def load_json(path: Path) -> dict[str, Any]:
    """A results file, or a one-line error naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{str(path)!r} does not exist; run `python benchmarks/reliability.py` first") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{str(path)!r} is not valid JSON ({err.msg} at line {err.lineno})") from None


def update_reliability_doc(results: str | Path, doc: str | Path) -> bool:
    """Rewrite ``doc`` from ``results``/reliability.json (and soak.json when present); True when it changed."""
    root = Path(results)
    data = load_json(root / "reliability.json")
    soak = load_json(root / "soak.json") if (root / "soak.json").is_file() else None
    text = render_reliability(data, soak)
    path = Path(doc)
    if path.is_file() and path.read_text() == text:
        return False
    atomic_write_text(path, text)
    return True
