"""Parquet tables kdforge writes for a later command (annotations, labeled rows, generated data, rationales), sealed.

Parquet checks its own structure but not its values: a flipped byte inside a data page can decode to another number
or string and be trained on. The sha256 of the table's decoded rows and metadata travels in the file's own schema
metadata and is checked on every read, so damage is reported by name, never used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from kdforge.errors import IntegrityError
from kdforge.files import SEAL, atomic_write

if TYPE_CHECKING:
    import pyarrow as pa

SEAL_KEY = f"kdforge.{SEAL}".encode()


def table_digest(table: pa.Table) -> str:
    """sha256 of a table's decoded rows, column names and schema metadata (its seal left out)."""
    meta = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in (table.schema.metadata or {}).items()}
    meta.pop(SEAL_KEY.decode(), None)
    # Decoded values, not bytes: the same table reads back equal whatever Parquet's encoding and page layout.
    body = {"columns": table.column_names, "meta": meta, "rows": table.to_pylist()}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def write_sealed_table(path: str | Path, table: pa.Table) -> None:
    """Write ``table`` as Parquet at ``path`` (atomically) with its digest in the schema metadata."""
    import pyarrow.parquet as pq

    meta = dict(table.schema.metadata or {})
    meta.pop(SEAL_KEY, None)
    plain = table.replace_schema_metadata(meta)
    sealed = plain.replace_schema_metadata({**meta, SEAL_KEY: table_digest(plain).encode()})
    atomic_write(path, lambda p: pq.write_table(sealed, p))


def read_sealed_table(path: str | Path, fix: str, what: str = "file") -> pa.Table:
    """Read a Parquet file, its seal checked when it has one (kdforge wrote it); damage is one IntegrityError."""
    import pyarrow.parquet as pq

    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PAR1":
        # Readers look at the footer's magic only; a damaged leading one still means the file is not as written.
        raise IntegrityError(f"{what} {str(path)!r} does not start as Parquet does: it is damaged; {fix}")
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises its own types for a file that is not (or no longer) Parquet
        reason = " ".join(str(err).split())
        raise IntegrityError(
            f"{what} {str(path)!r} cannot be read as Parquet ({reason}): it is damaged; {fix}"
        ) from None
    seal = (table.schema.metadata or {}).get(SEAL_KEY)
    if seal is not None and seal.decode(errors="replace") != table_digest(table):
        raise IntegrityError(f"{what} {str(path)!r} is damaged (its rows do not match its {SEAL}); {fix}")
    return table


def sealed(meta: dict[bytes, bytes] | None) -> bool:
    """Whether Parquet schema metadata carries a kdforge seal."""
    return bool(meta) and SEAL_KEY in meta  # type: ignore[operator]
