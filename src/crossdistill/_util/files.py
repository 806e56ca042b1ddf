"""Files that are either absent or complete: write to a temporary name, fsync, rename.

Every file crossdistill writes for later reading (run outputs, store shards, checkpoints,
caches, exports, reports) goes through :func:`atomic_path` or :func:`write_atomic`, so a crash
or a full disk never leaves a half-written file under the final name. Logs that grow (a run's
metrics.jsonl) grow by whole records through :class:`AppendLog`.

A write that fails for a reason the user can fix — a full disk, a quota, a read-only or
forbidden folder — is a :class:`~crossdistill.errors.WriteError` naming what was being written,
the folder, the free space there and the bytes needed (:func:`write_errors` turns one into the
other; folders written as a whole, such as checkpoints and exports, wrap themselves in it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crossdistill.errors import WriteError

# what a full disk, a quota, a read-only mount or a folder the user may not write raise
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
_ELSEWHERE = "another folder (--out, or output.dir in a recipe)"


def write_errno(exc: BaseException) -> int | None:
    """The errno behind a failed write: an :class:`OSError`'s, or the one a Rust I/O error
    names in its message (safetensors raises ``... (os error 28)``), along ``__cause__``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen.errno
        found = re.search(r"\(os error (\d+)\)", str(seen)[:2000])
        if found:
            return int(found.group(1))
        seen = seen.__cause__
    return None


def free_bytes(path: Path) -> int | None:
    """Free space on the file system holding ``path`` (or its nearest existing folder)."""
    for folder in (path, *path.parents):
        if folder.exists():
            with contextlib.suppress(OSError):
                return shutil.disk_usage(folder).free
            return None
    return None


def _size(n: int) -> str:
    """``n`` bytes for a person: ``950 bytes``, ``12.6 kB``, ``3.1 GB``."""
    value, unit = float(n), "bytes"
    for larger in ("kB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, larger
    return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def write_error(
    code: int, path: Path, what: str = "", needed: int | None = None, next_step: str | None = None
) -> WriteError:
    """The :class:`WriteError` for errno ``code`` while writing ``what`` at ``path``."""
    folder = next((p for p in (path, *path.parents) if p.is_dir()), path.parent)
    target = f"{what} {path}" if what else str(path)
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(folder)
        space = [f"{_size(free)} free in {folder}"] if free is not None else []
        # files take whole blocks: what the bytes need is a lower bound
        space += [f"at least {_size(needed)} needed"] if needed else []
        why = "the disk is full" if code == errno.ENOSPC else "the disk quota is used up"
        message = f"could not write {target}: {why}" + (f" ({'; '.join(space)})" if space else "")
        amount = f"at least {_size(needed)} more" if needed else "some space"
        hint = f"free {amount} in {folder}, or write to {_ELSEWHERE}"
    elif code == errno.EROFS:
        message = f"could not write {target}: {folder} is on a read-only file system"
        hint = f"write to {_ELSEWHERE}, or mount it read-write"
    else:
        message = f"could not write {target}: permission denied in {folder}"
        hint = f"check who may write there (ls -ld {folder}), or write to {_ELSEWHERE}"
    error = WriteError(message, hint, code, next_step)
    error.needed = needed  # type: ignore[attr-defined]  # an outer writer may rename the error
    return error


@contextlib.contextmanager
def write_errors(
    path: str | os.PathLike[str],
    what: str = "",
    needed: int | None = None,
    next_step: str | None = None,
) -> Iterator[None]:
    """Inside: a write that fails on a full disk, a quota, a read-only or forbidden folder
    raises a :class:`WriteError` naming ``what`` at ``path`` (a WriteError from an inner writer
    is renamed: the outermost one knows best what was being written). Other errors pass."""
    try:
        yield
    except Exception as exc:
        code = write_errno(exc)
        if code not in WRITE_ERRNOS:
            raise
        needed = needed if needed is not None else getattr(exc, "needed", None)
        next_step = next_step or getattr(exc, "next_step", None)
        raise write_error(code, Path(path), what, needed, next_step) from exc


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename inside it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` owned by this process (ranks never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def process_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one of another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(folder: Path) -> list[Path]:
    """Remove the temporaries (:func:`temporary_name`) in ``folder`` whose process no longer runs
    here, the bytes a writer killed mid-write (``kill -9``, an OOM kill) leaves; returns them.

    A temporary of a running process is kept: another writer may be using it."""
    removed = []
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
        pid = tmp.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or process_running(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, fsync: bool = True, what: str = "", needed: int | None = None
) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s contents to; on success it is flushed to disk
    and renamed onto ``path``, on any failure it is removed and ``path`` is left as it was.

    A full disk or a read-only folder is a :class:`WriteError` naming ``what`` at ``path``
    (and the ``needed`` bytes, when known)."""
    path = Path(path)
    with write_errors(path, what, needed):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(path)
        try:
            yield tmp
            if tmp.is_file():  # some writers (safetensors) create their file 0600
                os.chmod(tmp, 0o666 & ~_umask())
            if fsync:
                fsync_path(tmp)
            os.replace(tmp, path)
            if fsync:
                fsync_path(path.parent)  # the rename survives a crash
        except BaseException:
            with contextlib.suppress(OSError):  # e.g. its folder is a file
                tmp.unlink(missing_ok=True)
            raise


def write_atomic(
    path: str | os.PathLike[str], data: bytes | str, *, fsync: bool = True, what: str = ""
) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    blob = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path, fsync=fsync, what=what, needed=len(blob)) as tmp:
        tmp.write_bytes(blob)


def write_json(
    path: str | os.PathLike[str], data: Any, *, indent: int = 1, what: str = "", **kwargs: Any
) -> None:
    """``data`` as JSON (ending in a newline) at ``path``, atomically."""
    write_atomic(path, json.dumps(data, indent=indent, **kwargs) + "\n", what=what)


class AppendLog:
    """A file that grows by whole records (a run's metrics.jsonl): each :meth:`write` is one
    unbuffered append, and one that fails is cut off again, so a full disk (or a signal) never
    leaves half a record for the next append to run into."""

    def __init__(self, path: str | os.PathLike[str], what: str = "") -> None:
        self.path, self.what = Path(path), what
        with write_errors(self.path, what):
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        with write_errors(self.path, self.what, len(data)):
            start = os.fstat(self.fd).st_size
            try:
                while data:
                    data = data[os.write(self.fd, data) :]
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, start)
                raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def empty_dir(path: Path, keep: tuple[str, ...] = ()) -> None:
    """Remove everything in the folder ``path`` but the entries named in ``keep`` (a folder
    is removed whole; a link, never followed)."""
    for entry in path.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``; a folder already there is removed only
    after the rename, so ``target`` always holds one complete version."""
    mode = 0o666 & ~_umask()
    for file in tmp.rglob("*"):  # some writers (safetensors) create their files 0600
        if file.is_file() and not file.is_symlink():
            os.chmod(file, mode)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:  # the old version goes back: never neither
            os.replace(old, target)
        raise
    with contextlib.suppress(OSError):
        fsync_path(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
