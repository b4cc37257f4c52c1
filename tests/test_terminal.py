"""Terminal output: tables that fit 80 columns without cutting a value, and a status line for every long step."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from kdforge import cli, progress
from kdforge.report import COLUMNS, LM_COLUMNS, comparison_rows, fmt
from kdforge.tables import column_groups, fitted, share_widths

WIDTH = 80


def _render(renderable: object, width: int = WIDTH) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def _fits(text: str, width: int = WIDTH) -> None:
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, "\n".join(lines)
    assert "…" not in text, text


def _classification_rows() -> list[dict]:
    def run(acc: float, params: int, b1: float) -> dict:
        test = {"accuracy": acc, "agreement": 0.8731, "kl": 0.23456, "ece": 0.01234, "nll": 0.41234}
        profile = {"params": params, "size_bytes": 815_123, "latency_ms_b1": b1, "latency_ms_b256": 0.001234}
        return {"test": test, "profile": profile}

    teacher = run(0.92221, 389_898, 0.3121)
    runs = {"scratch": run(0.8512, 203_530, 0.0412), "kd": run(0.8633, 203_530, 0.04117)}
    runs["born-again/gen-ensemble"] = run(0.8701, 2_035_300, 12.5)
    return comparison_rows(runs, teacher)


def _lm_rows() -> list[dict]:
    test = {"perplexity": 1234.567, "nll": 7.1234, "accuracy": 0.1234, "agreement": 0.4567, "kl": 1.2345}
    profile = {"params": 134_515_008, "size_bytes": 538_060_032, "latency_ms_b1": 123.4, "latency_ms_b8": 45.67}
    return comparison_rows({"seqkd": {"test": test, "profile": profile}}, {"test": test, "profile": profile})


@pytest.mark.parametrize(("rows", "cols"), [(_classification_rows(), COLUMNS), (_lm_rows(), LM_COLUMNS)])
def test_run_tables_fit_80_columns_and_show_every_value(rows: list[dict], cols: tuple) -> None:
    text = _render(cli._table(rows, "fmnist-demo — test set"))
    _fits(text)
    for r in rows:
        for key, _ in cols:
            assert fmt(key, r.get(key)) in text, (key, text)
    assert text.count("│ teacher ") == 2  # split into two groups, each led by the run column
    wide = _render(cli._table(rows, "fmnist-demo — test set"), width=200)
    assert "(1/2)" not in wide and ("ms/sample b1" in wide or "ms/sequence b1" in wide)  # one table when it fits


def test_recipes_and_objectives_tables_fit_80_columns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (cli.recipes, cli.objectives):
        console = Console(width=WIDTH, record=True, file=io.StringIO())
        monkeypatch.setattr(cli, "out", console)
        command(as_json=False)
        text = console.export_text()
        _fits(text)
        command(as_json=True)
        words = " ".join(text.split())
        for item in json.loads(capsys.readouterr().out):
            assert item["name"] in words
            summary = item.get("summary") or item["description"].split(". ")[0].rstrip(".")
            # Wrapped on words, never cut: every word of the cell is there.
            assert all(word in words for word in summary.split()), summary


def test_a_key_value_table_folds_a_word_wider_than_the_console_instead_of_cutting_it() -> None:
    path = "/tmp/" + "a" * 100 + "/store"
    text = _render(fitted("store", ["key", "value"], [["path", path], ["rows", "5400"]], show_header=False))
    _fits(text)
    assert path in "".join(re.sub(r"[│┃ ]", "", line) for line in text.splitlines())


def test_column_groups_and_widths_golden() -> None:
    # Edge 1 + (min + 3) per column: 1+10 = 11, +13 = 24, +53 = 77 > 75 -> a new group led by column 0: 64, +8 = 72.
    assert column_groups([7, 10, 50, 5], 75) == [[0, 1], [0, 2, 3]]
    assert column_groups([7, 10, 50, 5], 60) == [[0, 1], [0, 2], [0, 3]]  # a lone column too wide keeps its group
    assert column_groups([7, 10, 50, 5], 200) == [[0, 1, 2, 3]]
    assert column_groups([7], 5) == [[0]]
    # Two key columns (pair, method) lead every group, so a split row stays named.
    assert column_groups([7, 10, 50, 5], 75, keys=2) == [[0, 1, 2], [0, 1, 3]]
    assert column_groups([7, 10], 5, keys=2) == [[0, 1]]
    # Max-min fair: 10 spare cells; column 0 wants 1 more, the others share the rest evenly.
    assert share_widths([5, 5, 5], [6, 20, 20], 25) == [6, 10, 9]
    assert share_widths([5, 5], [5, 5], 30) == [5, 5]
    # Below the minima the widest column gives way first.
    assert share_widths([4, 30], [4, 30], 20) == [4, 16]


def _level_widths(minimum: list[int], maximum: list[int], room: int) -> list[int]:
    """Independent water-filling: the highest level L with sum(clip(L)) <= room, the rest one cell each, leftmost."""
    pairs = list(zip(minimum, maximum, strict=True))
    level = max(L for L in range(max(maximum) + 1) if sum(min(max(L, a), b) for a, b in pairs) <= room)
    widths = [min(max(level, a), b) for a, b in pairs]
    rest = room - sum(widths)
    for i in range(len(widths)):
        if rest and widths[i] == level < maximum[i]:
            widths[i], rest = widths[i] + 1, rest - 1
    return widths


@pytest.mark.parametrize("room", [31, 41, 57, 90])
def test_share_widths_is_water_filling(room: int) -> None:
    minimum, maximum = [3, 8, 8, 12], [4, 40, 15, 30]
    assert share_widths(minimum, maximum, room) == _level_widths(minimum, maximum, room)


# -- status lines -------------------------------------------------------------------------------------------------


@pytest.fixture
def log_console(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """progress writing to a file, as in a CI log; progress on, rank 0."""
    buffer = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=buffer, width=WIDTH))
    monkeypatch.setenv("KDFORGE_PROGRESS", "1")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return buffer


def test_status_in_a_log_is_a_line_at_the_start_and_the_time_of_a_slow_step(
    log_console: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "SLOW_S", 0.25)
    with progress.status("loading data [x]"):
        with progress.status("fast step"):
            pass
        time.sleep(0.3)
    lines = log_console.getvalue().splitlines()
    assert lines[:2] == ["· loading data [x]", "· fast step"]
    assert re.fullmatch(r"✓ loading data \[x\] \(0\.\d s\)", lines[2]) and len(lines) == 3


def test_status_is_silent_when_disabled_or_not_rank_0(
    log_console: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDFORGE_PROGRESS", "0")
    with progress.status("hidden"), progress.bar("hidden bar", 3, progress.enabled()) as bar:
        assert bar is None
    monkeypatch.setenv("KDFORGE_PROGRESS", "1")
    monkeypatch.setenv("RANK", "1")
    with progress.status("hidden too"):
        pass
    assert log_console.getvalue() == ""


def test_a_bar_in_a_log_says_its_count_while_it_runs(log_console: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.05)
    monkeypatch.setattr(progress, "SLOW_S", 0.0)
    with progress.bar("train kd", 3) as bar:
        assert bar is not None
        bar.update(0, advance=2, info="loss 0.5000")
        time.sleep(0.3)  # no update for a while (an evaluation): the log still hears from the bar
    lines = log_console.getvalue().splitlines()
    assert lines[0] == "· train kd (3 steps)" and "· train kd: 2/3 loss 0.5000" in lines, lines
    assert re.fullmatch(r"✓ train kd \(3 steps\) \(0\.\d s\)", lines[-1]), lines


def test_a_long_step_in_a_log_says_it_is_still_running(
    log_console: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.05)
    with progress.status("evaluating the teacher"):
        time.sleep(0.3)
    lines = log_console.getvalue().splitlines()
    assert lines[0] == "· evaluating the teacher" and "· evaluating the teacher: 0 s so far" in lines, lines
    assert not progress._beat and not progress._steps  # the heartbeat thread stopped with the last step


def test_a_failed_step_reports_no_time(log_console: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "SLOW_S", 0.0)
    with pytest.raises(RuntimeError), progress.status("doomed"):
        raise RuntimeError("boom")
    assert log_console.getvalue().splitlines() == ["· doomed"]


def test_on_a_terminal_one_spinner_survives_nesting_a_bar_and_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=buffer, width=WIDTH, force_terminal=True))
    monkeypatch.setenv("KDFORGE_PROGRESS", "1")
    monkeypatch.delenv("RANK", raising=False)
    with progress.status("outer"), progress.status("inner"):
        assert [s.message for s in progress._steps] == ["outer", "inner"] and len(progress._spinner) == 1
        with progress.bar("train", 2) as bar:
            assert bar is not None and not progress._spinner[0]._live.is_started
            bar.update(0, advance=2)
        assert progress._spinner[0]._live.is_started
        progress.console.print("a warning")  # printed above the spinner, not into it
    assert progress._spinner == [] and progress._steps == []
    assert "a warning" in buffer.getvalue()


# -- the demo, end to end -------------------------------------------------------------------------------------------


def _fashion_mnist() -> None:
    from kdforge.data.fashion_mnist import locate

    try:
        locate(None)
    except Exception:
        pytest.skip("Fashion-MNIST files are not installed (run `make data`)")


def _demo(tmp_path: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The default demo cut to seconds: a tiny MLP teacher (cached under tmp_path), 300 images, one epoch."""
    exe = Path(sys.executable).with_name("kdforge")
    args = [
        "run",
        f"output_dir={tmp_path / 'runs'}",
        f"teacher.cache_dir={tmp_path / 'teachers'}",
        "data.params.train_limit=300",
        "teacher.model={name: mlp, params: {hidden: [16]}}",
        "teacher.train.epochs=0.02",
        "student.params.hidden=[16]",
        "train.epochs=1",
        *extra,
    ]
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK")}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, env={**environ, **env})


@pytest.mark.slow
def test_the_demo_says_each_step_in_order_and_its_table_fits_80_columns(tmp_path: Path) -> None:
    _fashion_mnist()
    res = _demo(tmp_path, KDFORGE_PROGRESS="1", COLUMNS="80")
    assert res.returncode == 0, res.stderr
    steps = [line[2:] for line in res.stderr.splitlines() if line.startswith("· ")]
    order = ["loading data", "training teacher", "train scratch", "computing the teacher's logits", "train kd"]
    order += ["evaluating the teacher", "profiling the teacher", "writing the report"]
    found = [next(i for i, s in enumerate(steps) if s.startswith(o)) for o in order]
    assert found == sorted(found), steps
    # A path is printed whole so it can be copied; only the tables must fit.
    run_line = f"run folder: {tmp_path / 'runs'}"
    assert run_line in res.stdout
    _fits("\n".join(line for line in res.stdout.splitlines() if not line.startswith(run_line)))
    for name in ("teacher", "scratch", "kd"):
        assert f"│ {name} " in res.stdout
    # The teacher now comes from the cache; one variant is enough to hear every kind of step stay silent.
    quiet = _demo(tmp_path, "variants={}", KDFORGE_PROGRESS="0", COLUMNS="80")
    assert quiet.returncode == 0, quiet.stderr
    assert not any(line.startswith(("· ", "✓ ")) for line in quiet.stderr.splitlines()), quiet.stderr
