"""The LLM request cache opened by several processes or threads at once, above all while it is being created."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import kdforge.llm.cache as cache_module
from kdforge.errors import IntegrityError
from kdforge.files import file_mode
from kdforge.llm.cache import RequestCache

# Each process opens the same fresh caches in the same order, starting at one agreed instant, so their creations
# collide; it prints how many opens failed.
_OPENER = """
import sys, time
from pathlib import Path
from kdforge.llm.cache import RequestCache
root, me, start = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
while time.time() < start:
    pass
failed = 0
for i in range(int(sys.argv[4])):
    try:
        cache = RequestCache(root / f"c{i}.sqlite")
        cache.put(f"key-{me}", {"from": me})
        cache.close()
    except Exception as err:
        failed += 1
        print(err, file=sys.stderr)
print(failed)
"""


def test_a_second_opener_while_the_first_creates_the_cache_uses_it(tmp_path: Path, monkeypatch, reliability) -> None:
    path = tmp_path / "answers.sqlite"
    real_connect, inside, resume = sqlite3.connect, threading.Event(), threading.Event()

    def slow_connect(*args, **kwargs):  # the first opener pauses right after SQLite made its file
        con = real_connect(*args, **kwargs)
        if threading.current_thread().name == "first" and not inside.is_set():
            inside.set()
            resume.wait(30)
        return con

    monkeypatch.setattr(cache_module.sqlite3, "connect", slow_connect)
    errors: list[BaseException] = []

    def first() -> None:
        try:
            RequestCache(path).put("a", {"label": "first"})
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    thread = threading.Thread(target=first, name="first")
    thread.start()
    assert inside.wait(30)
    second = RequestCache(path)  # what a second process sees at this moment: no empty file, a whole cache or none
    second.put("b", {"label": "second"})
    resume.set()
    thread.join(30)
    assert not errors, errors
    assert second.get_many(["a", "b"]) == {"a": {"label": "first"}, "b": {"label": "second"}}
    second.close()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [path.name]
    reliability.record(
        "concurrency",
        "a second opener of a new request cache while the first is inside SQLite's creation of it",
        "both use one cache, each answer stored once; no empty file is ever seen, no half-built file is left",
        trials=1,
    )


def test_six_processes_create_the_same_caches_at_once(tmp_path: Path, reliability) -> None:
    procs, start, caches = 6, time.time() + 2.0, 25
    cmd = [sys.executable, "-c", _OPENER, str(tmp_path)]
    running = [
        subprocess.Popen([*cmd, str(me), str(start), str(caches)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for me in range(procs)
    ]
    for proc in running:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == b"0", err.decode()[-2000:]
    for i in range(caches):
        with sqlite3.connect(tmp_path / f"c{i}.sqlite") as con:
            assert con.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == procs
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "a half-built cache was left behind"
    reliability.record(
        "concurrency",
        f"{procs} processes create the same {caches} new request caches at one instant, each storing an answer",
        "every open succeeds; every cache holds all six answers; no half-built file is left",
        trials=caches,
    )


def test_a_cache_half_built_by_a_killed_process_is_swept(tmp_path: Path, reliability, dead_pid: int) -> None:
    staging = tmp_path / f".answers.sqlite.{dead_pid}.abcd1234.tmp"
    staging.write_bytes(b"SQLite format 3\x00")  # its creator was killed mid-build
    cache = RequestCache(tmp_path / "answers.sqlite")
    cache.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.sqlite"]
    reliability.record(
        "concurrency",
        "a request cache half-built by a process killed while creating it (its staging file left beside it)",
        "the next opener removes the staging file (its writer's pid is gone) and creates the cache",
        trials=1,
    )


def test_an_emptied_cache_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "answers.sqlite"
    path.touch()
    with pytest.raises(IntegrityError, match=r"answers\.sqlite.*is empty \(0 bytes\).*delete it"):
        RequestCache(path)
    assert path.read_bytes() == b""


def test_a_new_cache_is_a_wal_database_with_the_umask_s_permissions(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "answers.sqlite")
    assert (tmp_path / "answers.sqlite").stat().st_mode & 0o777 == file_mode()
    cache.put("k", [1, 2])
    assert cache.get("k") == [1, 2] and len(cache) == 1
    cache.close()
    with sqlite3.connect(tmp_path / "answers.sqlite") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
