"""API keys: read from an environment variable or a file that the recipe names, never from the recipe itself.

A key read here is held in a ``Secret``, whose ``str`` and ``repr`` are ``***`` (a traceback's locals, a debugger or a
stray f-string show that, not the key), which refuses to be pickled, and which registers the key so that ``redact``
can strip it from any text: a server or a library may echo the Authorization header into an error, and the command
line's error boundary redacts every line and traceback it prints.
"""

from __future__ import annotations

import base64
import os
import re
import stat
import threading
import warnings
from pathlib import Path
from typing import NoReturn

from kdforge.errors import ConfigError

MASK = "***"
MAX_FILE_BYTES = 16384  # an API key is tens to hundreds of bytes: a larger file is the wrong file
# Recipe keys that would hold a key itself rather than name where it is (the recipe is saved with every run).
LITERAL_KEY = re.compile(r"(?i)^(api[_-]?key|key|secret|password|authorization|bearer|((access|api|auth)[_-]?)?token)$")

_known: set[str] = set()
_lock = threading.Lock()


class Secret:
    """A credential: ``reveal()`` gives the value; ``str``, ``repr`` and formatting give ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value
        register(value)

    def reveal(self) -> str:
        """The value itself, for the one place that sends it (an HTTP header)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __reduce__(self) -> NoReturn:
        # A pickle lands in a file (a checkpoint, a cache, a DataLoader worker's queue): a key never does.
        raise TypeError("a Secret is never pickled")


def register(value: str) -> None:
    """Remember ``value`` as a secret of this process, so ``redact`` removes it from any text."""
    if value:
        with _lock:
            _known.add(value)


def _forms(value: str) -> list[str]:
    """Every form a message may carry ``value`` in: as is, escaped by ``repr`` of a str or of bytes, base64."""
    b64 = base64.b64encode(value.encode()).decode()
    forms = {value, repr(value)[1:-1], str(value.encode())[2:-1], b64, b64.rstrip("=")}
    return sorted((f for f in forms if f), key=len, reverse=True)  # the longest first: a form inside another


def redact(text: str) -> str:
    """``text`` with every registered secret, in any of its forms, replaced by ``***``."""
    with _lock:
        known = list(_known)
    for value in known:
        for form in _forms(value):
            text = text.replace(form, MASK)
    return text


def _header_safe(key: str, where: str) -> str:
    # An HTTP header takes visible ASCII only; the message never shows the key, only where it came from.
    if not all(33 <= ord(c) <= 126 for c in key):
        raise ConfigError(
            f"{where}: the key holds spaces, control or non-ASCII characters; an HTTP header cannot carry it"
        )
    return key


def key_from_env(name: str, field: str = "teacher.api_key_env") -> Secret:
    """The key held by environment variable ``name`` (surrounding whitespace stripped)."""
    key = (os.environ.get(name) or "").strip()  # a .env file with CRLF leaves a '\r'
    if not key:
        raise ConfigError(f"{field}={name!r}: that environment variable is not set")
    return Secret(_header_safe(key, f"{field}={name!r}"))


def key_from_file(path: str, field: str = "teacher.api_key_file") -> Secret:
    """The key held by file ``path`` (its whole content, surrounding whitespace stripped); warns when others can
    read it."""
    file = Path(path).expanduser()
    where = f"{field}={path!r}"
    try:
        info = file.stat()
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file; expected a file holding the API key") from None
    except OSError as err:
        raise ConfigError(f"{where}: cannot be read ({err.strerror}); expected a file holding the API key") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{where}: not a regular file; expected a file holding the API key")
    if info.st_size > MAX_FILE_BYTES:
        raise ConfigError(f"{where}: {info.st_size} bytes; expected a file holding the API key alone")
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise ConfigError(f"{where}: cannot be read ({err.strerror}); expected a file holding the API key") from None
    try:
        key = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not ASCII text; expected a file holding the API key") from None
    if not key:
        raise ConfigError(f"{where}: the file is empty; expected the API key in it")
    secret = Secret(_header_safe(key, where))
    if os.name == "posix" and info.st_mode & stat.S_IROTH:
        # Warned, not refused: container secrets are often mounted 0644/0444 on single-user machines.
        warnings.warn(
            f"{where} is readable by every user (mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it",
            UserWarning,
            stacklevel=2,
        )
    return secret


def read_key(env: str | None, file: str | None, prefix: str = "teacher") -> Secret | None:
    """The API key from environment variable ``env`` or file ``file`` (at most one is given), or None."""
    if env and file:
        raise ConfigError(f"{prefix}.api_key_env and {prefix}.api_key_file: give one source of the key, not both")
    if env:
        return key_from_env(env, f"{prefix}.api_key_env")
    if file:
        return key_from_file(file, f"{prefix}.api_key_file")
    return None
