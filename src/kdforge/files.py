"""Atomic, verified files: write to a temporary name, fsync, rename; hash what was written.

A layer below ``store/`` and ``engine/`` so that both can use it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from kdforge.errors import IntegrityError

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


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def sweep_staging_files(target: str | Path) -> list[Path]:
    """(Writers) delete the temporary files ``.NAME.PID.XXXX.tmp`` that writers killed mid-write left next to
    ``target``; a file whose writer still runs is left alone. Returns what was removed."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(re.escape(f".{target.name}.") + r"(\d+)\.[A-Za-z0-9_]{8}\.tmp")
    removed = []
    for item in target.parent.iterdir():
        match = pattern.fullmatch(item.name)
        # The writer's pid is in the name: a file some other writer's temporary name (safetensors replaces the
        # file it is given, so a lock on it would not last) is removed only once that writer is gone.
        if match and not _alive(int(match.group(1))) and item.is_file() and not item.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                item.unlink()
                removed.append(item)
    return removed


@contextlib.contextmanager
def _naming(target: Path) -> Iterator[None]:
    """Give a write's OS error the file it was writing: writers in Rust or C (safetensors, pyarrow) report a full
    disk as their own exception with no path, which would reach the user as an internal error naming nothing."""
    try:
        yield
    except OSError as err:
        if err.errno is None or err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(target)) from err
    except Exception as err:
        text = str(err)
        if "No space left on device" not in text and "os error 28" not in text:
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from err


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then move the result over ``path``; readers never see half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_staging_files(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        with _naming(target):
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
        with _naming(target):
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


# --- sealed JSON records ------------------------------------------------------------------------------------------
# A JSON record kdforge writes (checkpoint state, store manifest, teacher meta, export record) carries the sha256 of
# its own content, so a flipped byte that still parses (a digit of a step, a metric) is caught like one that does not.

SEAL = "sha256_self"


def _canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sealed_json(record: Mapping[str, Any], indent: int | None = 2, default: Callable[[Any], Any] | None = None) -> str:
    """``record`` as JSON text with ``sha256_self``: the sha256 of its canonical content, checked on read."""
    # Sealed as a reader will parse it back (default=str turns values into strings; tuples become lists).
    plain = json.loads(json.dumps(dict(record), default=default))
    plain.pop(SEAL, None)
    plain[SEAL] = hashlib.sha256(_canonical(plain)).hexdigest()
    return json.dumps(plain, indent=indent) + "\n"


def _near_seal(key: str) -> bool:
    """A key one character off ``sha256_self``: the seal's own name hit by a flipped byte."""
    return len(key) == len(SEAL) and sum(a != b for a, b in zip(key, SEAL, strict=True)) == 1


def _unseal(record: dict[str, Any]) -> str | None:
    """Remove ``record``'s seal and say what is wrong with it: None when it matches or there is none (older files)."""
    seal = record.pop(SEAL, None)
    if seal is None:
        return f"its {SEAL} key is garbled" if any(_near_seal(k) for k in record) else None
    return None if seal == hashlib.sha256(_canonical(record)).hexdigest() else f"its content does not match its {SEAL}"


def _utf8(path: Path, fix: str, what: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError(f"{what} {str(path)!r} is not UTF-8 text: it is damaged; {fix}") from None


def read_json_record(path: str | Path, fix: str, what: str = "file") -> dict[str, Any]:
    """A JSON mapping kdforge wrote, its seal checked; damage is one IntegrityError naming ``path`` and ``fix``.

    A record without a seal was written by an older kdforge and is read as it is. A missing file raises
    FileNotFoundError: only the caller knows whether that is damage.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = " ".join(str(err).split())
        raise IntegrityError(f"{what} {str(path)!r} is not valid JSON ({reason}): it is damaged; {fix}") from None
    if not isinstance(record, dict):
        raise IntegrityError(
            f"{what} {str(path)!r} holds a {type(record).__name__}; expected a mapping: it is damaged; {fix}"
        )
    problem = _unseal(record)
    if problem:
        raise IntegrityError(f"{what} {str(path)!r} is damaged ({problem}); {fix}")
    return record


TEXT_SEAL = f"# {SEAL}: "  # the first line of a sealed text file; a comment to YAML, so a copy still loads anywhere


def sealed_text(text: str) -> str:
    """``text`` under a first comment line holding its sha256: a truncated or edited copy no longer matches."""
    return f"{TEXT_SEAL}{hashlib.sha256(text.encode()).hexdigest()}\n{text}"


def read_sealed_text(path: str | Path, fix: str, what: str = "file") -> str:
    """The text of a file written with ``sealed_text``, seal checked and removed; damage is one IntegrityError.

    The seal is on the first line so that a truncation, which cuts from the end, is always caught. A file without
    a seal (written by an older kdforge) is read as it is.
    """
    path = Path(path)
    text = _utf8(path, fix, what)
    first, _, rest = text.partition("\n")
    head = first[: len(TEXT_SEAL)]
    if head != TEXT_SEAL:
        if len(head) == len(TEXT_SEAL) and sum(a != b for a, b in zip(head, TEXT_SEAL, strict=True)) == 1:
            raise IntegrityError(f"{what} {str(path)!r} is damaged (its {SEAL} line is garbled); {fix}")
        return text
    if first[len(TEXT_SEAL) :] != hashlib.sha256(rest.encode()).hexdigest():
        raise IntegrityError(f"{what} {str(path)!r} is damaged (its content does not match its {SEAL}); {fix}")
    return rest


def sealed_line(record: Mapping[str, Any]) -> str:
    """One JSON-lines record with its own ``sha256_self`` (a log line that can be checked alone), newline included."""
    return sealed_json(record, indent=None)


def read_sealed_lines(path: str | Path, fix: str, what: str = "log") -> list[dict[str, Any]]:
    """The records of a JSON-lines log kdforge appends to, each line's seal checked.

    A last line without its newline is what a kill mid-append leaves: dropped, as never written. Any other line that
    is not a record, or does not match its seal, is one IntegrityError naming the file and the line. Lines without a
    seal (an older kdforge) are read as they are.
    """
    path = Path(path)
    lines = _utf8(path, fix, what).split("\n")
    records = []
    for number, line in enumerate(lines[:-1], start=1):  # the piece after the last newline is empty or torn
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise IntegrityError(f"{what} {str(path)!r} line {number} is not a JSON record: it is damaged; {fix}")
        problem = _unseal(record)
        if problem:
            raise IntegrityError(f"{what} {str(path)!r} line {number} is damaged ({problem}); {fix}")
        records.append(record)
    return records
