"""The IDX file format (MNIST, Fashion-MNIST): a magic number, big-endian sizes, then the raw data."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from kdforge.errors import KdforgeError

# IDX type codes -> big-endian numpy dtypes (the format stores multi-byte values big-endian).
DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(KdforgeError, ValueError):
    """An IDX file is truncated or has a bad header; the message names the file."""


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or plain) into a native-endian numpy array."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IdxFormatError(f"{path}: corrupt gzip data ({err}); delete it and fetch it again") from err
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file; ``name`` is used in error messages."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in DTYPES or raw[3] == 0:
        raise IdxFormatError(
            f"{name}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'}; expected 0000 then a "
            f"type code in {', '.join(f'{c:02x}' for c in DTYPES)} and a dimension count >= 1)"
        )
    dtype, ndim = DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{name}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IdxFormatError(
            f"{name}: IDX header says shape {shape} ({expected} data bytes) "
            f"but the file holds {len(raw) - header}; the file is truncated or corrupt"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed when the name ends in ``.gz``."""
    codes = {dt.newbyteorder("="): code for code, dt in DTYPES.items()}
    native = np.dtype(array.dtype).newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of {sorted(map(str, codes))}")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
