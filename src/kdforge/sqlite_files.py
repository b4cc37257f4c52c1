"""SQLite caches that appear whole, refuse damage in one line, and say what to do.

Both SQLite files kdforge keeps (the LLM request cache and the SeqKD response cache) open through here: a new file is
built beside its path and hard-linked into place, so a second process never sees it half-made; an empty file is
damage, never a new database; and every SQLite error becomes one line naming the file (a full disk, damage with the
fix, or SQLite's own words).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from kdforge.errors import ConfigError, IntegrityError
from kdforge.files import file_mode, sweep_staging_files


def row_digest(*parts: str | bytes) -> str:
    """sha256 of a row's fields, newline-separated: SQLite checks its own pages, not the bytes a row stores."""
    h = hashlib.sha256()
    for i, part in enumerate(parts):
        if i:
            h.update(b"\n")
        h.update(part.encode() if isinstance(part, str) else part)
    return h.hexdigest()


def _no_space(path: Path) -> bool:
    """Whether the file system holding ``path`` has no free block left (SQLite reports ENOSPC as an I/O error)."""
    try:
        return os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return False


def raise_sqlite_error(where: str, path: Path, err: sqlite3.Error | OSError, fix: str) -> NoReturn:
    """One line for an error on ``path``: a full disk, damage (with ``fix``), or SQLite's or the OS's own words."""
    full = getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or getattr(err, "errno", None) == errno.ENOSPC
    if full or _no_space(path):
        raise ConfigError(
            f"{where}: no space left on device ({err}); free some space and run again: what was stored so far is kept"
        ) from None
    if isinstance(err, OSError):
        raise ConfigError(f"{where}: cannot create it ({err.strerror})") from None
    if isinstance(err, sqlite3.OperationalError):  # locked past the timeout, read-only, ...
        raise ConfigError(f"{where}: {err}") from None
    # "file is not a database", "database disk image is malformed", ...
    raise IntegrityError(f"{where} is damaged ({err}); {fix}") from None


def _create(path: Path, schema: str, where: str, fix: str) -> None:
    """A new database at ``path``, appearing there whole: built beside it, then hard-linked into place.

    sqlite3.connect creates an empty file and writes the header later, so a second process starting at that moment
    would see an empty file, indistinguishable from an emptied one. A hard link never replaces: the first process to
    link wins and the others use its file.
    """
    sweep_staging_files(path)  # what a process killed while creating this file left
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise_sqlite_error(where, path, err, fix)
    os.close(fd)
    tmp = Path(name)
    try:
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            # No journal while building: a kill leaves the one staging file, which the next opener sweeps. Every
            # connection to the file itself turns WAL on.
            con.execute("PRAGMA journal_mode=OFF")
            con.executescript(schema)
        finally:
            con.close()
        os.chmod(tmp, file_mode())  # mkstemp's 0600 → what SQLite would have given a file it created
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use that one
        except OSError:  # a file system without hard links: a rename, unless the path appeared meanwhile
            if not path.exists():
                os.replace(tmp, path)
    except (sqlite3.Error, OSError) as err:
        raise_sqlite_error(where, path, err, fix)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def prepare_database(path: Path, schema: str, where: str, fix: str) -> None:
    """Make ``path`` hold a database with ``schema``'s tables (created whole if missing); refuse an emptied file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{where}: cannot create its folder ({err.strerror})") from None
    if not path.exists():
        _create(path, schema, where, fix)
    if path.is_file() and path.stat().st_size == 0:
        # SQLite would take an empty file for a new database and write over it. kdforge never leaves one empty (a new
        # file appears whole), so an empty file is damage.
        raise IntegrityError(f"{where} is empty (0 bytes): it is damaged; {fix}")


def add_column_if_missing(run: Callable[[str], list[Any]], table: str, column: str, declaration: str) -> None:
    """Add ``column`` to ``table`` in a file written before it existed (``run`` executes one statement)."""
    if column not in {row[1] for row in run(f"PRAGMA table_info({table})")}:
        with contextlib.suppress(ConfigError):  # another process (or DDP rank) may add it first
            run(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def connect(path: Path, where: str, fix: str) -> sqlite3.Connection:
    """A connection in WAL mode (readers and one writer overlap) that waits up to a minute for another writer."""
    try:
        con = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a killed process
        con.execute("PRAGMA busy_timeout=60000")
    except sqlite3.DatabaseError as err:
        raise_sqlite_error(where, path, err, fix)
    return con
