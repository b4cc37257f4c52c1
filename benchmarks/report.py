"""Rewrite the README's results section from benchmarks/results/ (the same as `kdforge bench` with no suite)."""

from __future__ import annotations

from pathlib import Path

from kdforge.bench.readme import update_readme

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    """Rewrite the README between the results markers."""
    changed = update_readme(ROOT / "README.md", ROOT / "benchmarks" / "results")
    print(f"README results {'updated' if changed else 'unchanged'}")


if __name__ == "__main__":
    main()
