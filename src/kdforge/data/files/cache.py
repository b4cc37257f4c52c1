"""Where the files data set keeps its Arrow caches, and content hashes that are computed once per file version."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_ENV = "KDFORGE_CACHE"
CHUNK = 1 << 20


def files_cache() -> Path:
    """``$KDFORGE_CACHE/files``, or ``~/.cache/kdforge/files``."""
    root = os.environ.get(CACHE_ENV, "").strip()
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "kdforge") / "files"


def _members(path: Path) -> list[Path]:
    """The file itself, or every file under a folder in a stable order (hidden files skipped)."""
    if path.is_file():
        return [path]
    found = (p for p in path.rglob("*") if p.is_file())
    return sorted((p for p in found if not any(part.startswith(".") for part in p.relative_to(path).parts)), key=str)


def _signature(path: Path, members: list[Path]) -> str:
    """A hash of the paths, sizes and modification times: what changes whenever the content may have."""
    h = hashlib.sha256(str(path.resolve()).encode())
    for p in members:
        st = p.stat()
        h.update(f"\0{p.relative_to(path) if p != path else ''}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def content_hash(path: Path) -> str:
    """sha256 over the bytes (and relative names) of a file or folder, memoised on disk by size and mtime.

    A large image folder is read once per version, not on every run (``datasets`` keys its own cache the same way).
    """
    members = _members(path)
    memo = files_cache() / "hashes" / _signature(path, members)
    if memo.is_file():
        return memo.read_text().strip()
    h = hashlib.sha256()
    for p in members:
        h.update(f"\0{p.relative_to(path) if p != path else ''}\0".encode())
        with open(p, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
    digest = h.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
    tmp.write_text(digest)
    tmp.replace(memo)
    return digest
