"""Reader for the IDX format (MNIST, Fashion-MNIST): raw or gzip-compressed, no pickle.

Layout: two zero bytes, a type byte, a byte ``n`` (number of dimensions), ``n`` big-endian
uint32 sizes, then the data in C order, big-endian.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from crossdistill.errors import DataError

# Type byte -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

GZIP_MAGIC = b"\x1f\x8b"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = "install it with `sudo apt-get install -y dataset-fashion-mnist`"


def _missing_hint(path: Path) -> str:
    try:
        under_fashion = path.resolve().is_relative_to(FASHION_MNIST_DIR.resolve())
    except OSError:
        under_fashion = False
    if under_fashion or path.is_relative_to(FASHION_MNIST_DIR):
        return FASHION_MNIST_HINT
    return "check the path, or point the data source's `root` at the directory holding the files"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The array stored in the IDX file at ``path`` (gzip detected by its magic bytes).

    Returns a writable array in native byte order. Raises :class:`DataError` naming the file
    when it is missing, unreadable, not IDX, of an unknown type, or shorter than its header says.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}", hint=_missing_hint(path)) from None
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from None

    compressed = raw[:2] == GZIP_MAGIC
    if compressed:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(
                f"IDX file {path} is a corrupted or truncated gzip file ({e})",
                hint="download or reinstall the file",
            ) from None

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"{path} is not an IDX file: bad magic {raw[:4].hex(' ') or '(empty file)'}"
            " (expected 00 00 <type> <ndim>)"
        )
    type_byte, ndim = raw[2], raw[3]
    if type_byte not in IDX_DTYPES:
        known = ", ".join(f"0x{t:02X}" for t in IDX_DTYPES)
        raise DataError(f"IDX file {path} has unknown data type 0x{type_byte:02X} (known: {known})")
    dtype = IDX_DTYPES[type_byte]

    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(
            f"IDX file {path} is truncated: header declares {ndim} dimensions but the file has"
            f" only {len(raw)} bytes",
            hint="download or reinstall the file",
        )
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    # Python ints: a header's dimensions (up to 2**32 - 1 each) overflow int64 when multiplied
    count = math.prod(shape)
    expected = count * dtype.itemsize
    actual = len(raw) - header_len
    if actual != expected:
        size = f"{len(raw)} bytes" + (" once decompressed" if compressed else "")
        # Trailing bytes mean the header and the data disagree too: better to refuse than guess.
        problem = "is truncated" if actual < expected else "is malformed"
        raise DataError(
            f"IDX file {path} {problem}: its header declares shape {shape} of {dtype.name}, "
            f"{expected:,} data bytes, but the file holds {actual:,} after its {header_len}-byte "
            f"header ({size})",
            hint="download or reinstall the file",
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header_len)
    # astype copies: the result is writable (torch.from_numpy warns otherwise) and native-endian.
    return data.astype(dtype.newbyteorder("="), copy=True).reshape(shape)
