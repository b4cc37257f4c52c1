"""A request cache in SQLite (WAL): every request keyed by (model, prompt, parameters), its answer stored once.

Re-running a finished job sends nothing; a killed job finds every answer it got before it died. Several processes may
annotate one data set at once: WAL lets readers and one writer overlap, ``INSERT OR IGNORE`` keeps the first answer
for a key, and a busy timeout waits out another writer. Keys and values are built by the callers from the request body
only; headers (where an API key travels) never reach this file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from kdforge.errors import ConfigError, IntegrityError
from kdforge.files import file_mode, sweep_staging_files


def _no_space(path: Path) -> bool:
    """Whether the file system holding ``path`` has no free block left (SQLite reports ENOSPC as an I/O error)."""
    try:
        return os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return False


# sha256 guards each row: SQLite checks its own structure, not the bytes of a stored answer (NULL: written before).
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL, sha256 TEXT)"
)
_DAMAGED = "delete it to start a new cache (its requests are then sent again)"


def _row_digest(key: str, value: str) -> str:
    return hashlib.sha256(f"{key}\n{value}".encode()).hexdigest()


def _raise_for(path: Path, err: sqlite3.Error | OSError) -> NoReturn:
    """One line for a database error: a full disk, damage (with what to do), or SQLite's own words."""
    where = f"request cache {str(path)!r}"
    full = getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or getattr(err, "errno", None) == errno.ENOSPC
    if full or _no_space(path):
        raise ConfigError(
            f"{where}: no space left on device ({err}); free some space and run again: the answers stored so "
            "far are kept"
        ) from None
    if isinstance(err, OSError):
        raise ConfigError(f"{where}: cannot create it ({err.strerror})") from None
    if isinstance(err, sqlite3.OperationalError):  # locked past the timeout, read-only, ...
        raise ConfigError(f"{where}: {err}") from None
    # "file is not a database", "database disk image is malformed", ...
    raise IntegrityError(f"{where} is damaged ({err}); {_DAMAGED}") from None


def _create(path: Path) -> None:
    """A new cache at ``path``, appearing there whole: built beside it, then hard-linked into place.

    sqlite3.connect creates an empty file and writes the header later, so a second process starting at that moment
    would see an empty file, indistinguishable from an emptied cache. A hard link never replaces: the first process
    to link wins and the others use its cache.
    """
    sweep_staging_files(path)  # what a process killed while creating this cache left
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        _raise_for(path, err)
    os.close(fd)
    tmp = Path(name)
    try:
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            # No journal while building: a kill leaves the one staging file, which the next opener sweeps. Every
            # connection to the cache itself turns WAL on.
            con.execute("PRAGMA journal_mode=OFF")
            con.execute(_SCHEMA)
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
        _raise_for(path, err)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def request_key(payload: Mapping[str, Any]) -> str:
    """sha256 of the payload as canonical JSON (sorted keys, no spaces): equal requests, equal keys."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class RequestCache:
    """Answers by request key; one SQLite connection per thread, shared file across processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"request cache {str(self.path)!r}: cannot create its folder ({err.strerror})") from None
        if not self.path.exists():
            _create(self.path)
        if self.path.is_file() and self.path.stat().st_size == 0:
            # SQLite would take an empty file for a new database and write over it. kdforge never leaves a cache
            # empty (a new one appears whole, see _create), so an empty file is damage.
            raise IntegrityError(f"request cache {str(self.path)!r} is empty (0 bytes): it is damaged; {_DAMAGED}")
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # Held around every statement and by close(): a worker thread still asking when the job closes the cache
        # (after another thread's error) must never use a connection being closed, which crashes inside SQLite.
        self._use = threading.Lock()
        self._run(_SCHEMA)
        columns = {row[1] for row in self._run("PRAGMA table_info(answers)")}
        if "sha256" not in columns:  # a cache from before row checksums; another process may add it first
            with contextlib.suppress(ConfigError):
                self._run("ALTER TABLE answers ADD COLUMN sha256 TEXT")

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            try:
                con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a killed process
                con.execute("PRAGMA busy_timeout=60000")
            except sqlite3.DatabaseError as err:
                self._raise(err)
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    def _run(self, sql: str, args: tuple | list = ()) -> list[Any]:
        """One statement's rows; a database error (locked, read-only, disk full, damaged) is one line."""
        with self._use:
            try:
                return self._connection().execute(sql, args).fetchall()
            except sqlite3.Error as err:
                self._raise(err)

    def _raise(self, err: sqlite3.Error) -> NoReturn:
        _raise_for(self.path, err)

    def _answer(self, key: str, value: str, digest: str | None) -> Any:
        """A stored answer, checked against its row's sha256 before it is used."""
        if digest is not None and digest != _row_digest(key, value):
            raise IntegrityError(
                f"request cache {str(self.path)!r} is damaged (a stored answer does not match its sha256); {_DAMAGED}"
            )
        return json.loads(value)

    def get(self, key: str) -> Any | None:
        """The stored answer for ``key``, or None."""
        rows = self._run("SELECT value, sha256 FROM answers WHERE key = ?", (key,))
        row = rows[0] if rows else None
        return None if row is None else self._answer(key, row[0], row[1])

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Stored answers for the keys that have one (chunked: SQLite caps the number of bound parameters)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value, digest in self._run(
                f"SELECT key, value, sha256 FROM answers WHERE key IN ({marks})", chunk
            ):
                found[key] = self._answer(key, value, digest)
        return found

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-serialisable) under ``key`` unless an answer is already there; committed at once."""
        import time

        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        self._run(
            "INSERT OR IGNORE INTO answers (key, value, created, sha256) VALUES (?, ?, ?, ?)",
            (key, text, time.time(), _row_digest(key, text)),
        )

    def __len__(self) -> int:
        return int(self._run("SELECT COUNT(*) FROM answers")[0][0])

    def close(self) -> None:
        """Close every thread's connection (a thread asking afterwards opens a new one)."""
        with self._use, self._lock:
            for con in self._all:
                con.close()
            self._all.clear()
        self._local = threading.local()
