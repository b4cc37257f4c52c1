"""Strategies: who teaches whom, when. Each is one file registered in STRATEGIES."""

from kdforge.strategies import (  # noqa: F401
    assistant,
    born_again,
    function_matching,
    mean_teacher,
    multi_teacher,
    mutual,
    offline,
    teaching_loop,
)
