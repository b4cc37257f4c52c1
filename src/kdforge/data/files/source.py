"""Read one data file or folder into an Arrow-backed, memory-mapped ``datasets.Dataset`` (rows never as lists)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.csv as pa_csv

from kdforge.data.files.cache import content_hash, files_cache
from kdforge.data.files.images import list_image_folder
from kdforge.errors import ConfigError
from kdforge.progress import enabled

FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
EXPECTED = ".csv, .tsv, .jsonl, .json, .parquet, a save_to_disk folder or an image folder (one sub-folder per class)"


@dataclass
class Source:
    """One split's rows as read from ``path`` (recipe key ``key``); row i is sample id i."""

    key: str
    path: Path
    kind: str  # "csv" | "json" | "parquet" | "disk" | "images"
    rows: datasets.Dataset
    content: str  # sha256 of the file(s)

    @property
    def base(self) -> Path:
        """Where relative image paths start: an image folder itself, or the folder holding a table of paths."""
        return (self.path if self.kind == "images" else self.path.parent).resolve()

    @property
    def table(self) -> pa.Table:
        """The underlying Arrow table (memory-mapped for everything but an image folder's listing)."""
        return self.rows.data.table

    def column(self, name: str) -> pa.ChunkedArray:
        """Column ``name``; an unknown one names the file and lists the columns found."""
        if name not in self.rows.column_names:
            found = ", ".join(self.rows.column_names)
            raise ConfigError(f"{self.key}={str(self.path)!r} has no column {name!r}; columns found: {found}")
        return self.table.column(name)


def check_path(key: str, value: str) -> tuple[Path, str]:
    """The path a recipe names and its format; a missing path or an unsupported type fails naming the key."""
    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError(f"{key}={value!r}: no such file or folder")
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise ConfigError(
                f"{key}={value!r} is a DatasetDict saved with save_to_disk (splits: {', '.join(splits)}); "
                f"name one split's folder, e.g. {str(path / splits[0]) if splits else value!r}"
            )
        return path, "disk" if (path / "state.json").is_file() else "images"
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{key}={value!r}: unsupported file type {path.suffix or '(none)'!r}; expected {EXPECTED}")
    if path.stat().st_size == 0:
        raise ConfigError(f"{key}={value!r} is empty (no rows)")
    return path, fmt


@contextmanager
def quiet() -> Iterator[None]:
    """Hide the ``datasets`` progress bars where kdforge hides its own (KDFORGE_PROGRESS=0)."""
    if enabled() or datasets.utils.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def _load_file(path: Path, fmt: str) -> datasets.Dataset:
    kwargs: dict[str, object] = {}
    if fmt == "csv":
        # Every CSV cell stays the string it is: label "007" is not the number 7, text "NA" is not missing.
        # Only an empty cell is missing.
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        options = pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
        names = pa_csv.open_csv(path, parse_options=options).schema.names
        kwargs = {
            "features": datasets.Features({n: datasets.Value("string") for n in names}),
            "keep_default_na": False,
            "na_values": [""],
            "sep": delimiter,
        }
    return datasets.load_dataset(
        fmt, data_files=str(path), split="train", cache_dir=str(files_cache() / "datasets"), **kwargs
    )


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return " ".join(str(err).split())[:200] or type(err).__name__


def _check_parquet(key: str, value: str, path: Path) -> None:
    """Refuse a Parquet file that cannot be read, or that kdforge wrote (generate, annotate, a teaching round) and no
    longer matches its seal, before `datasets` (which logs its own error lines) ever sees it."""
    import pyarrow.parquet as pq

    from kdforge.sealed_parquet import read_sealed_table, sealed

    try:
        meta = pq.read_schema(path).metadata
    except Exception as err:  # pyarrow's own types for a file that is not (or no longer) Parquet
        raise ConfigError(f"{key}={value!r} cannot be read as parquet: {' '.join(str(err).split())}") from None
    if sealed(meta):
        read_sealed_table(path, "write it again with the kdforge command that made it", what=key)


def read_source(key: str, value: str) -> Source:
    """Read the file or folder a recipe key names; every failure is one ConfigError naming key and path."""
    path, fmt = check_path(key, value)
    if fmt == "images":
        rows = list_image_folder(key, path)
    else:
        if fmt == "parquet":
            _check_parquet(key, value, path)
        try:
            with quiet():
                rows = datasets.load_from_disk(str(path)) if fmt == "disk" else _load_file(path, fmt)
        except ConfigError:
            raise
        except Exception as err:  # pandas, pyarrow and datasets each raise their own types for a malformed file
            cause = _root_cause(err)
            if "corresponds to no data" in cause:
                raise ConfigError(f"{key}={value!r} has no rows") from None
            raise ConfigError(f"{key}={value!r} cannot be read as {fmt}: {cause}") from None
    if len(rows) == 0:
        raise ConfigError(f"{key}={value!r} has no rows")
    if rows._indices is not None:  # a save_to_disk folder is always flat; row numbers must be sample ids
        raise ConfigError(f"{key}={value!r} holds an indices mapping; save it again after flatten_indices()")
    return Source(key, path, fmt, rows, content_hash(path))
