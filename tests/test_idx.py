"""Tests of flight_parsl.data.idx: round trips, gzip detection and malformed files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from flight_parsl.data.idx import read_idx, write_idx
from flight_parsl.core.errors import DataError

RNG = np.random.default_rng(7)
ARRAYS = {
    "uint8_3d": RNG.integers(0, 256, size=(5, 4, 3), dtype=np.uint8),
    "uint8_1d": RNG.integers(0, 10, size=17, dtype=np.uint8),
    "int8": RNG.integers(-128, 128, size=(3, 2), dtype=np.int8),
    "int16": RNG.integers(-30000, 30000, size=(4, 3), dtype=np.int16),
    "int32": RNG.integers(-(2**31), 2**31 - 1, size=(6,), dtype=np.int32),
    "float32": RNG.standard_normal((2, 3, 4)).astype(np.float32),
    "float64": RNG.standard_normal((3, 5)),
}


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("key", sorted(ARRAYS))
def test_round_trip(tmp_path, key, suffix):
    array = ARRAYS[key]
    path = tmp_path / f"{key}-idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype
    assert back.dtype.isnative
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    back[...] = 0  # the result is writable


def test_gzip_detected_by_magic_not_suffix(tmp_path):
    array = ARRAYS["uint8_3d"]
    gz_path = tmp_path / "a.gz"
    write_idx(gz_path, array)
    assert gz_path.read_bytes()[:2] == b"\x1f\x8b"
    renamed = tmp_path / "images-idx3-ubyte"
    renamed.write_bytes(gz_path.read_bytes())
    np.testing.assert_array_equal(read_idx(renamed), array)


def test_raw_layout_is_big_endian(tmp_path):
    path = tmp_path / "x"
    write_idx(path, np.array([1, 258], dtype=np.int16))
    assert path.read_bytes() == bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0, 1, 1, 2])


def test_gzip_output_is_deterministic(tmp_path):
    write_idx(tmp_path / "a.gz", ARRAYS["float32"])
    write_idx(tmp_path / "b.gz", ARRAYS["float32"])
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_bad_magic_names_file(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DataError, match="bad magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_data_names_file(tmp_path, suffix):
    full = tmp_path / "full"
    write_idx(full, ARRAYS["uint8_3d"])
    path = tmp_path / f"trunc{suffix}"
    payload = full.read_bytes()[:-5]
    path.write_bytes(gzip.compress(payload) if suffix else payload)
    with pytest.raises(DataError, match="truncated data") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x00\x00", "shorter than the 4-byte header"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unsupported dtype code 0x07"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "truncated header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x05\x06", "1 unexpected trailing bytes"),
    ],
)
def test_malformed_headers(tmp_path, payload, reason):
    path = tmp_path / "m"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=reason) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "c.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x05")[:12])
    with pytest.raises(DataError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope")


def test_unsupported_dtype_write(tmp_path):
    with pytest.raises(DataError, match="int64"):
        write_idx(tmp_path / "x", np.arange(3, dtype=np.int64))
    assert not (tmp_path / "x").exists()
