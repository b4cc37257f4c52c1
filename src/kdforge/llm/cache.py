"""A request cache in SQLite (WAL): every request keyed by (model, prompt, parameters), its answer stored once.

Re-running a finished job sends nothing; a killed job finds every answer it got before it died. Several processes may
annotate one data set at once: WAL lets readers and one writer overlap, ``INSERT OR IGNORE`` keeps the first answer
for a key, and a busy timeout waits out another writer. Keys and values are built by the callers from the request body
only; headers (where an API key travels) never reach this file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kdforge.errors import ConfigError

_SCHEMA = "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"


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
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._run(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            try:
                con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a killed process
                con.execute("PRAGMA busy_timeout=60000")
            except sqlite3.DatabaseError as err:
                raise ConfigError(f"request cache {str(self.path)!r} is not a usable SQLite file: {err}") from None
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    def _run(self, sql: str, args: tuple | list = ()) -> sqlite3.Cursor:
        """One statement; a database error (locked past the timeout, read-only, disk full, corrupt) is one line."""
        try:
            return self._connection().execute(sql, args)
        except sqlite3.Error as err:
            raise ConfigError(f"request cache {str(self.path)!r}: {err}") from None

    def get(self, key: str) -> Any | None:
        """The stored answer for ``key``, or None."""
        row = self._run("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Stored answers for the keys that have one (chunked: SQLite caps the number of bound parameters)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value in self._run(f"SELECT key, value FROM answers WHERE key IN ({marks})", chunk):
                found[key] = json.loads(value)
        return found

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-serialisable) under ``key`` unless an answer is already there; committed at once."""
        import time

        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        self._run("INSERT OR IGNORE INTO answers (key, value, created) VALUES (?, ?, ?)", (key, text, time.time()))

    def __len__(self) -> int:
        return int(self._run("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for con in self._all:
                con.close()
            self._all.clear()
        self._local = threading.local()
