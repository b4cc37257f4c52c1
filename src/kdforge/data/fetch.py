"""Downloading a data file: short timeout, atomic write, switched off by KDFORGE_OFFLINE."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

OFFLINE_ENV = "KDFORGE_OFFLINE"
TIMEOUT_S = 5.0


def offline() -> bool:
    """True when KDFORGE_OFFLINE is set to anything but empty, 0, false or no."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def cache_root() -> Path:
    """The per-user folder that downloads go to: ~/.cache/kdforge/datasets."""
    return Path.home() / ".cache" / "kdforge" / "datasets"


def download(url: str, dest: Path, timeout: float = TIMEOUT_S, validate: Callable[[Path], Any] | None = None) -> Path:
    """Fetch ``url`` to ``dest`` via a temp file and a rename; a failed or invalid download leaves nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out)
        if validate is not None:
            validate(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
