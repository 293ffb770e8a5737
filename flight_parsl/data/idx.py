"""The IDX file format (the format of the MNIST files): reading and writing.

An IDX file is a 4-byte magic number (two zero bytes, a dtype code, the number of
dimensions), one big-endian uint32 per dimension, then the data in C order, big
endian. Files may be gzip-compressed; the reader detects that by the gzip magic
bytes, not by the file name. This module owns nothing else.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from flight_parsl.core.errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"

#: IDX dtype code -> the big-endian numpy dtype of the stored data.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_SUPPORTED = "uint8, int8, int16, int32, float32, float64"


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed.

    Args:
        path: The file to read.

    Returns:
        A writable, native-endian array of the stored dtype and shape.

    Raises:
        DataError: The file is missing, unreadable or malformed.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist") from None
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"malformed IDX file {path}: corrupt gzip data ({exc})") from None
    return _parse(raw, path)


def _parse(raw: bytes, path: Path) -> np.ndarray:
    """Decode the bytes of an uncompressed IDX file."""
    if len(raw) < 4:
        raise DataError(f"malformed IDX file {path}: {len(raw)} bytes, shorter than the 4-byte header")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"malformed IDX file {path}: bad magic number 0x{raw[:4].hex()} "
            "(the first two bytes must be zero)"
        )
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise DataError(f"malformed IDX file {path}: unsupported dtype code 0x{code:02X} (supported: {_SUPPORTED})")
    data_start = 4 + 4 * ndim
    if len(raw) < data_start:
        raise DataError(f"malformed IDX file {path}: truncated header ({ndim} dimensions need {data_start} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _DTYPES[code]
    count = math.prod(shape)
    expected = count * dtype.itemsize
    found = len(raw) - data_start
    if found < expected:
        raise DataError(
            f"malformed IDX file {path}: truncated data, shape {shape} needs {expected} bytes, found {found}"
        )
    if found > expected:
        raise DataError(
            f"malformed IDX file {path}: {found - expected} unexpected trailing bytes after the data of shape {shape}"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=data_start).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write an array as an IDX file, gzip-compressed when the path ends with ``.gz``.

    The gzip header carries no file name or time stamp, so equal arrays give equal bytes.

    Args:
        path: The file to write; its directory must exist.
        array: An array of dtype uint8, int8, int16, int32, float32 or float64.

    Raises:
        DataError: The dtype or shape cannot be stored in IDX.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _code_of(array.dtype)
    if any(dim > 0xFFFFFFFF for dim in array.shape):
        raise DataError(f"cannot write IDX file {path}: dimension of shape {array.shape} exceeds 2**32 - 1")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()
    with open(path, "wb") as out:
        if path.name.endswith(".gz"):
            with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as compressed:
                compressed.write(payload)
        else:
            out.write(payload)


def _code_of(dtype: np.dtype) -> int:
    """Return the IDX dtype code of a numpy dtype."""
    for code, stored in _DTYPES.items():
        if dtype.kind == stored.kind and dtype.itemsize == stored.itemsize:
            return code
    raise DataError(f"IDX cannot store dtype {dtype}; supported: {_SUPPORTED}")
