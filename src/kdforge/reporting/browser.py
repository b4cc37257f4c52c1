"""Open a report in headless Chromium (Debian's chromium + chromium-driver) through selenium: logs, images, screenshot.

For tests and the documentation's screenshot; selenium is a development dependency, imported only here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver",)


@dataclass(frozen=True)
class PageCheck:
    """What the browser saw: console entries, each image's (complete, naturalWidth), and the results tables."""

    console: list[dict[str, Any]]
    images: list[tuple[bool, int]]
    results_tables: int
    title: str

    @property
    def severe(self) -> list[dict[str, Any]]:
        """Console entries at level SEVERE (errors: a failed load, a script error)."""
        return [e for e in self.console if e.get("level") == "SEVERE"]


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths when both are installed, else None."""
    chromium = next((p for p in CHROMIUM if Path(p).is_file()), shutil.which("chromium"))
    driver = next((p for p in CHROMEDRIVER if Path(p).is_file()), shutil.which("chromedriver"))
    return (chromium, driver) if chromium and driver else None


def open_report(
    html: str | Path, screenshot: str | Path | None = None, width: int = 1400, height: int = 0
) -> PageCheck:
    """Load ``html`` from disk in headless Chromium; save a PNG of the page (``height`` 0: the whole page)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_browser()
    if found is None:
        raise FileNotFoundError("headless Chromium needs the Debian packages chromium and chromium-driver")
    chromium, chromedriver = found
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # --no-sandbox: containers run as root, where Chromium's sandbox refuses to start.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.get(Path(html).resolve().as_uri())
        images = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);")
        tables = driver.execute_script("return document.querySelectorAll('table.results').length;")
        if screenshot is not None:
            full = driver.execute_script("return document.documentElement.scrollHeight;")
            driver.set_window_size(width, min(int(full), 16000) if height <= 0 else height)
            driver.save_screenshot(str(screenshot))
        return PageCheck(driver.get_log("browser"), [(bool(c), int(w)) for c, w in images], int(tables), driver.title)
    finally:
        driver.quit()
