"""Atomic, verified files: write to a temporary name, fsync, rename; hash what was written.

A layer below ``store/`` and ``engine/`` so that both can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: no advisory locks, so staging folders are never swept)
    fcntl = None  # type: ignore[assignment]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    # /proc gives the umask without changing it; the os.umask(0) dance briefly lets other threads create
    # world-writable files.
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` gives a new file under the current umask."""
    return 0o666 & ~_umask()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then move the result over ``path``; readers never see half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates 0600 files, and so does safetensors' save_file (which replaces the file it is given):
        # give the result the permissions a plain open() would, after whatever `write` did.
        os.chmod(tmp, file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``."""
    atomic_write(path, lambda p: p.write_text(text))


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory holding it is flushed.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _previous(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_swap(target: str | Path) -> Path:
    """(Writers) finish a swap killed between its two renames: the previous folder becomes ``target`` again."""
    target = Path(target)
    old = _previous(target)
    if not target.exists() and old.exists():
        with contextlib.suppress(FileNotFoundError):  # another process recovered it first
            os.replace(old, target)
    return target


def readable_dir(target: str | Path) -> Path:
    """(Readers) ``target``, or the previous folder a killed swap left behind; never renames anything."""
    target = Path(target)
    old = _previous(target)
    return old if not target.exists() and old.exists() else target


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive advisory lock on folder ``path``, or None if another process holds it."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def staging_dirs(target: str | Path) -> Iterator[Path]:
    """Staging folders ``.NAME.XXXX`` of ``target`` (never ``target`` itself nor its ``.NAME.old`` backup)."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    # Exactly mkdtemp's names (8 characters of [a-z0-9_]), so `.NAME.old` and other targets' folders never match.
    pattern = re.compile(re.escape(f".{target.name}.") + r"[a-z0-9_]{8}")
    for item in target.parent.iterdir():
        if pattern.fullmatch(item.name) and item.is_dir() and not item.is_symlink():
            yield item


def sweep_staging(target: str | Path) -> list[Path]:
    """(Writers) delete staging folders a killed write of ``target`` left behind; returns what was removed.

    A writer holds a lock on its staging folder while it builds it, and the kernel drops the lock when the
    writer dies, so a folder whose lock can be taken is abandoned; one still being built is left alone.
    """
    removed = []
    for item in staging_dirs(target):
        fd = _try_lock(item)
        if fd is None:
            continue
        try:
            shutil.rmtree(item, ignore_errors=True)
            removed.append(item)
        finally:
            os.close(fd)
    return removed


def atomic_replace_dir(build: Callable[[Path], None], target: str | Path) -> None:
    """Build a directory next to ``target`` and swap it in; the old one survives until the swap."""
    target = recover_swap(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    lock = _try_lock(staging)
    os.chmod(staging, 0o777 & ~_umask())
    try:
        build(staging)
        for item in staging.rglob("*"):
            if item.is_file() and not item.is_symlink():
                # Library writers (safetensors) create 0600 files; a staged folder holds data, never executables.
                os.chmod(item, file_mode())
                with open(item, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(staging)
        old = _previous(target)
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        # A kill here leaves only `.old`; readers find it (readable_dir), the next writer puts it back.
        os.replace(staging, target)
        _fsync_dir(target.parent)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if lock is not None:
            os.close(lock)
        if staging.exists():
            shutil.rmtree(staging)
