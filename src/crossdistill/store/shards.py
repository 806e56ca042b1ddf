"""Shard files: safetensors written atomically, read back as NumPy memory maps.

A shard is a plain safetensors file (any safetensors reader opens it). Reading maps it instead of
loading it: the header gives each array's dtype, shape and byte range, and a ``np.memmap`` over
that range is the array, so opening a large store costs nothing until rows are touched.
"""

from __future__ import annotations

import errno
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save

from crossdistill._util import files
from crossdistill.errors import StoreError

_NUMPY_DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "U8": np.uint8,
}


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``_util.files``); a full disk or any other
    write failure is a :class:`StoreError`."""
    try:
        files.write_atomic(path, data)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StoreError(
                f"the disk is full: could not write {path}",
                hint="free some space and run the same command again: it continues where it "
                "stopped, and the store is not marked complete until every shard is written",
            ) from None
        raise StoreError(f"could not write {path}: {exc.strerror or exc}") from None


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())


def write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save ``arrays`` as a safetensors file at ``path``, atomically."""
    write_atomic(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))


def map_shard(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a shard as read-only memory maps (nothing is read until used)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(fh.read(header_len))
    except (OSError, ValueError, struct.error) as exc:
        raise StoreError(
            f"store shard {path} is unreadable: {exc}",
            hint="run `crossdistill cache` again to rewrite it",
        ) from None
    base = 8 + header_len
    arrays = {}
    try:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, stop = info["data_offsets"]
            dtype = np.dtype(_NUMPY_DTYPES[info["dtype"]])
            shape = tuple(info["shape"])
            if base + stop > size:
                raise StoreError(
                    f"store shard {path} is truncated (array {name!r} ends past its end)",
                    hint="run `crossdistill cache` again to rewrite it",
                )
            if stop == start:
                arrays[name] = np.empty(shape, dtype=dtype)
            else:
                arrays[name] = np.memmap(
                    path, dtype=dtype, mode="r", offset=base + start, shape=shape
                )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # a header that is JSON but not a safetensors header (say, edited by hand)
        raise StoreError(
            f"store shard {path} has a malformed header: {exc!r}",
            hint="run `crossdistill cache` again to rewrite it",
        ) from None
    return arrays
