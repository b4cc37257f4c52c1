"""Reproducible benchmark suites: `kdforge bench SUITE --seeds N` and the README tables generated from them."""

from kdforge.bench.run import BenchReport, get_suite, run_suite, validate_suite
from kdforge.bench.suite import SUITES, Cell, Column, Suite, register_suite

__all__ = [
    "SUITES",
    "BenchReport",
    "Cell",
    "Column",
    "Suite",
    "get_suite",
    "register_suite",
    "run_suite",
    "validate_suite",
]
