"""docs/report-screenshot.png: run the default demo recipe (fmnist-demo) on a small budget, write its report, open it
in headless Chromium and save the top of the page. Fails if the browser logs an error or an image does not load.

    .venv/bin/python scripts/report-screenshot.py            # small budget (minutes on two CPU cores)
    .venv/bin/python scripts/report-screenshot.py --full     # the recipe as shipped (teacher trained and cached)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A budget that shows every part of the page in minutes: a smaller CNN teacher trained for one epoch (cached in the
# work folder, not the user's cache), 2,000 transfer images, two student epochs, an evaluation every 8 steps.
SMALL = [
    "teacher.model.params={widths: [8, 16]}",
    "teacher.train.epochs=1",
    "data.params.train_limit=2000",
    "train.epochs=2",
    "train.log_every=5",
    "train.eval_every=8",
]


def main() -> int:
    """Run, report, screenshot; print where everything went."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the recipe as shipped, not the small budget")
    parser.add_argument("--out", default=str(ROOT / "docs" / "report-screenshot.png"), help="the PNG to write")
    parser.add_argument("--height", type=int, default=2600, help="pixels of the page to capture (0: all of it)")
    args = parser.parse_args()
    os.environ.setdefault("KDFORGE_PROGRESS", "0")

    from kdforge import recipes
    from kdforge.recipe import load_yaml
    from kdforge.reporting import write_report
    from kdforge.reporting.browser import open_report
    from kdforge.runner import resolve, run

    work = Path(tempfile.mkdtemp(prefix="kdforge-screenshot-"))
    overrides = [f"output_dir={work / 'runs'}"]
    if not args.full:
        overrides += [*SMALL, f"teacher.cache_dir={work / 'teachers'}"]
    run_dir = run(resolve(load_yaml(recipes.find("fmnist-demo")), overrides))["run_dir"]
    files = write_report([run_dir])
    page = open_report(files.html, work / "page.png", height=args.height)
    broken = [i for i, (complete, width) in enumerate(page.images) if not complete or width == 0]
    if page.severe or broken or page.results_tables < 1:
        print(f"the page did not render cleanly: console {page.severe}, images not loaded {broken}", file=sys.stderr)
        return 1
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "page.png", args.out)
    print(f"report: {files.html}\nscreenshot: {args.out} ({len(page.images)} images, no console errors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
