"""Jane Austen's six novels (public domain) from the Debian package r-cran-janeaustenr, read without R."""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from functools import lru_cache
from pathlib import Path

from kdforge.errors import DataNotFoundError

DEBIAN_DIR = Path("/usr/lib/R/site-library/janeaustenr/data")
BOOKS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
_HOW = (
    "get it with `apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb DIR` and pass "
    "root=DIR/usr/lib/R/site-library/janeaustenr/data (or copy that data folder to "
    "~/.cache/kdforge/datasets/janeaustenr), or run `make data`"
)


def _candidates(root: str | os.PathLike[str] | None) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    env = os.environ.get("KDFORGE_DATA_DIR")
    user = [Path(env) / "janeaustenr"] if env else []
    return [DEBIAN_DIR, *user, Path.home() / ".cache" / "kdforge" / "datasets" / "janeaustenr"]


def _rds(blob: bytes) -> object:
    import rdata  # optional dependency, only needed for this corpus

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that a bare RDS stream has no file header
        return rdata.conversion.convert(rdata.parser.parse_data(blob))


@lru_cache(maxsize=2)
def austen_novels(root: str | None = None) -> dict[str, str]:
    """Book name → full text (lines joined with newlines), from the package's R lazy-load database."""
    tried = _candidates(root)
    folder = next((p for p in tried if (p / "Rdata.rdx").is_file() and (p / "Rdata.rdb").is_file()), None)
    if folder is None:
        raise DataNotFoundError(f"Jane Austen corpus not found (looked in {', '.join(map(str, tried))}); {_HOW}")
    index = _rds(gzip.decompress((folder / "Rdata.rdx").read_bytes()))
    data = (folder / "Rdata.rdb").read_bytes()
    books = {}
    for name in BOOKS:
        offset, length = (int(v) for v in index["variables"][name])
        # Each object: a 4-byte length, then zlib-compressed RDS.
        lines = _rds(zlib.decompress(data[offset + 4 : offset + length]))
        books[name] = "\n".join(str(line) for line in lines)
    return books
