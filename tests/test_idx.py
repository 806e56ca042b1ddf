"""read_idx: raw and gzip round trips, every dtype, and errors that name the file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from crossdistill.data.idx import FASHION_MNIST_HINT, read_idx
from crossdistill.errors import DataError

TYPE_BYTES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


def idx_bytes(array: np.ndarray, dtype: np.dtype) -> bytes:
    header = bytes([0, 0, TYPE_BYTES[dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(dtype).tobytes()


def write(path: Path, data: bytes, compress: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("dtype", list(TYPE_BYTES), ids=lambda d: d.str)
def test_round_trip(tmp_path: Path, dtype: np.dtype, compress: bool) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(-100, 100, size=(3, 4, 5)).astype(dtype)
    if dtype.kind == "u":
        array = rng.integers(0, 256, size=(3, 4, 5)).astype(dtype)
    if dtype.kind == "f":
        array = array + 0.25
    path = write(tmp_path / "x.idx", idx_bytes(array, dtype), compress)
    out = read_idx(path)
    assert out.shape == (3, 4, 5)
    assert out.dtype == dtype.newbyteorder("=")
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


def test_one_dimensional_labels(tmp_path: Path) -> None:
    labels = np.array([9, 0, 0, 3], dtype=np.uint8)
    path = write(tmp_path / "labels-idx1-ubyte.gz", idx_bytes(labels, np.dtype("u1")), True)
    np.testing.assert_array_equal(read_idx(str(path)), labels)


def test_empty_array(tmp_path: Path) -> None:
    path = write(tmp_path / "e.idx", idx_bytes(np.zeros((0, 2), np.uint8), np.dtype("u1")))
    assert read_idx(path).shape == (0, 2)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_truncated_data(tmp_path: Path, compress: bool) -> None:
    data = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.dtype("u1"))[:-5]
    path = write(tmp_path / "short.idx", data, compress)
    with pytest.raises(DataError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert "24" in info.value.message and "19" in info.value.message


def test_truncated_header(tmp_path: Path) -> None:
    path = write(tmp_path / "hdr.idx", bytes([0, 0, 0x08, 3, 0, 0, 0, 2]))
    with pytest.raises(DataError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(np.zeros((10, 10), np.uint8), np.dtype("u1")))
    path = write(tmp_path / "cut.gz", data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_trailing_bytes(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((2, 2), np.uint8), np.dtype("u1")) + b"\x00"
    path = write(tmp_path / "long.idx", data)
    with pytest.raises(DataError, match="malformed") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("data", [b"\x01\x02\x08\x01\x00\x00\x00\x01\x05", b"", b"\x00"])
def test_bad_magic(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path / "bad.idx", data)
    with pytest.raises(DataError, match="not an IDX file") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_unknown_type(tmp_path: Path) -> None:
    path = write(tmp_path / "type.idx", bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(DataError, match="0x0A") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file_generic_hint(tmp_path: Path) -> None:
    path = tmp_path / "absent.idx"
    with pytest.raises(DataError, match="not found") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert info.value.hint is not None
    assert "apt-get" not in info.value.hint


def test_missing_fashion_mnist_file_hints_apt() -> None:
    path = "/usr/share/datasets/fashion-mnist/does-not-exist-idx1-ubyte.gz"
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert path in str(info.value)
    assert info.value.hint == FASHION_MNIST_HINT
    assert "sudo apt-get install -y dataset-fashion-mnist" in str(info.value)


def test_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_idx(tmp_path)
    assert str(tmp_path) in str(info.value)
