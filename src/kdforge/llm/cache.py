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

from kdforge.errors import IntegrityError
from kdforge.sqlite_files import add_column_if_missing, connect, prepare_database, raise_sqlite_error, row_digest

# sha256 guards each row: SQLite checks its own structure, not the bytes of a stored answer (NULL: written before).
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL, sha256 TEXT)"
)
_DAMAGED = "delete it to start a new cache (its requests are then sent again)"


def request_key(payload: Mapping[str, Any]) -> str:
    """sha256 of the payload as canonical JSON (sorted keys, no spaces): equal requests, equal keys."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class RequestCache:
    """Answers by request key; one SQLite connection per thread, shared file across processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._where = f"request cache {str(self.path)!r}"
        prepare_database(self.path, _SCHEMA, self._where, _DAMAGED)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # Held around every statement and by close(): a worker thread still asking when the job closes the cache
        # (after another thread's error) must never use a connection being closed, which crashes inside SQLite.
        self._use = threading.Lock()
        self._run(_SCHEMA)
        add_column_if_missing(self._run, "answers", "sha256", "TEXT")  # a cache from before row checksums

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = connect(self.path, self._where, _DAMAGED)
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
                raise_sqlite_error(self._where, self.path, err, _DAMAGED)

    def _answer(self, key: str, value: str, digest: str | None) -> Any:
        """A stored answer, checked against its row's sha256 before it is used."""
        if digest is not None and digest != row_digest(key, value):
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
            (key, text, time.time(), row_digest(key, text)),
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
