"""The HTML report renders in headless Chromium (Debian's chromium + chromium-driver, driven by selenium): no console
error, every image loaded, the results table present. Skipped, not failed, where the browser or selenium is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdforge.reporting.browser import find_browser, open_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def browser() -> None:
    if find_browser() is None:
        pytest.skip("headless Chromium needs the Debian packages chromium and chromium-driver")
    try:
        import selenium  # noqa: F401
    except ImportError as err:  # a broken install counts as missing too
        pytest.skip(f"selenium drives Chromium ({err}); pip install selenium")


@pytest.mark.slow
def test_report_opens_in_headless_chromium_without_errors(browser: None, tmp_path: Path) -> None:
    from kdforge.reporting import write_report
    from kdforge.runner import resolve, run

    tree = {
        "name": "digits-browser",
        "data": {"name": "digits", "params": {"val_fraction": 0.1}, "batch_size": 64},
        "teacher": {"kind": "live", "model": {"name": "mlp", "params": {"hidden": [32]}},
                    "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.003}},
                    "cache_dir": str(tmp_path / "teachers")},
        "student": {"name": "mlp", "params": {"hidden": [16]}},
        "objectives": {"ce": 0.5, "kd": {"weight": 0.5, "T": 4}},
        "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 0.003}, "log_every": 5},
        "variants": {"scratch": {"objectives": {"ce": 1.0}}, "kd": {}},
        "output_dir": str(tmp_path / "runs"),
    }  # fmt: skip
    files = write_report([run(resolve(tree))["run_dir"]], tmp_path / "report")
    shot = tmp_path / "screenshot.png"
    page = open_report(files.html, shot)
    assert page.severe == [], page.severe
    assert len(page.images) == len(files.figures) == 5
    assert all(complete and width > 0 for complete, width in page.images), page.images
    assert page.results_tables == 1
    assert page.title.startswith("kdforge report")
    assert shot.read_bytes().startswith(PNG)
