"""Files that are either absent or complete: write to a temporary name, fsync, rename.

Every file crossdistill writes for later reading (run outputs, store shards, checkpoints,
caches, exports, reports) goes through :func:`atomic_path` or :func:`write_atomic`, so a crash
or a full disk never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename inside it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` owned by this process (ranks never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s contents to; on success it is flushed to disk
    and renamed onto ``path``, on any failure it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if fsync:
            fsync_path(tmp)
        os.replace(tmp, path)
        if fsync:
            fsync_path(path.parent)  # the rename survives a crash
    except BaseException:
        with contextlib.suppress(OSError):  # e.g. its folder is a file
            tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, fsync: bool = True) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    blob = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(blob)


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int = 1, **kwargs: Any) -> None:
    """``data`` as JSON (ending in a newline) at ``path``, atomically."""
    write_atomic(path, json.dumps(data, indent=indent, **kwargs) + "\n")


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``; a folder already there is removed only
    after the rename, so ``target`` always holds one complete version."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    with contextlib.suppress(OSError):
        fsync_path(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
