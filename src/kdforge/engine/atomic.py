"""Atomic, verified files: write to a temporary name, fsync, rename; hash what was written."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then move the result over ``path``; readers never see half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        write(Path(tmp))
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


def atomic_replace_dir(build: Callable[[Path], None], target: str | Path) -> None:
    """Build a directory next to ``target`` and swap it in; the old one survives until the swap."""
    target = recover_swap(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        build(staging)
        for item in staging.iterdir():
            if item.is_file():
                with open(item, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(staging)
        old = _previous(target)
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        # A kill here leaves only `.old`; recover_swap (on the next read or write) puts it back.
        os.replace(staging, target)
        _fsync_dir(target.parent)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
