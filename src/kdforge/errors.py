"""Errors that name what was wrong and what was expected; the CLI maps them to exit code 2."""

from __future__ import annotations


class KdforgeError(Exception):
    """Base class for every error caused by the user's input (recipe, data, shapes)."""


class ConfigError(KdforgeError, ValueError):
    """A recipe key, objective name or parameter is invalid."""


class DataNotFoundError(KdforgeError, FileNotFoundError):
    """A data set could not be found; the message says how to get it."""


class ShapeMismatchError(KdforgeError, ValueError):
    """Teacher and student outputs cannot be compared."""


class NonFiniteSignalError(KdforgeError, ValueError):
    """A teacher signal (logits, top-k log-probabilities, hidden states, features) holds values no loss can use."""


class NonFiniteLossError(KdforgeError, FloatingPointError):
    """A loss term became NaN or inf; the message names the step and the term."""

    def __init__(self, step: int, term: str, value: float):
        self.step, self.term, self.value = step, term, value
        super().__init__(
            f"non-finite loss at step {step}: term {term!r} = {value}; training stopped, "
            "the last good checkpoint is left intact (lower the learning rate or check the inputs)"
        )


class IntegrityError(KdforgeError):
    """A file on disk does not match its recorded checksum."""


class Interrupted(Exception):  # noqa: N818 (a stop, not an error; like KeyboardInterrupt)
    """A run stopped by a signal (Ctrl-C, SIGTERM); not a user error. The CLI exits with 128 + ``signum``."""

    def __init__(self, signum: int, message: str = ""):
        self.signum = signum
        self.message = message or f"interrupted by signal {signum}"
        super().__init__(signum, self.message)  # both in args, so the exception survives pickling

    def __str__(self) -> str:
        return self.message
