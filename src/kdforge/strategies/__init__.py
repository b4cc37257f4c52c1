"""Strategies: who teaches whom, when. Each is one file registered in STRATEGIES."""

from kdforge.strategies import offline, teaching_loop  # noqa: F401
