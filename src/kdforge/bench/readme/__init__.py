"""The README's results section, rendered from benchmarks/results/ (never typed by hand)."""

from kdforge.bench.readme.render import END, START, render_results, update_readme

__all__ = ["END", "START", "render_results", "update_readme"]
