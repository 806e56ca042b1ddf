"""``arrays``: your own NumPy arrays, an ``.npz`` file or a folder of ``.npy`` files.

Each array holds one entry per example along its first axis. Some are fields (what the models
read), one may be the targets, one the group of each example (a user, a subject: examples of
one group stay in one split) and one the split of each example. Nothing is unpickled: object
arrays are refused (save strings as a NumPy string array, ``np.array(names, dtype=str)``).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdistill.data.grouping import assign_by_column, assign_by_hash, select
from crossdistill.data.sources.base import DATA_SOURCES
from crossdistill.data.split import Split
from crossdistill.errors import ConfigError, DataError


class _Arrays:
    """The arrays of an ``.npz`` or a folder of ``.npy``, read when first asked for (a folder's
    arrays memory-mapped, so only the rows of one split are copied)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_dir():
            self.files = {p.stem: p for p in sorted(path.glob("*.npy"))}
            self.npz = None
        elif path.is_file():
            try:
                self.npz = np.load(path, allow_pickle=False)
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                raise DataError(
                    f"arrays: {path} is not a NumPy .npz file ({exc})",
                    hint="write it with np.savez(path, x=..., y=...), or give a folder of .npy",
                ) from None
            if not isinstance(self.npz, np.lib.npyio.NpzFile):
                raise DataError(
                    f"arrays: {path} holds a single array, not an .npz of named arrays",
                    hint="put the .npy files in one folder and give the folder",
                )
            self.files = {}
        else:
            raise DataError(
                f"arrays: {path} does not exist",
                hint="`path` is an .npz file or a folder of .npy files (relative paths are read "
                "from the working directory)",
            )
        self.keys = sorted(self.npz.files if self.npz is not None else self.files)
        if not self.keys:
            raise DataError(f"arrays: {path} holds no arrays")

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.keys:
            raise DataError(f"arrays: {self.path} has no array {key!r}; it holds {self.keys}")
        try:
            if self.npz is not None:
                array = self.npz[key]
            else:
                array = np.load(self.files[key], mmap_mode="r", allow_pickle=False)
        except ValueError as exc:  # object arrays need pickle, which is never used
            raise DataError(
                f"arrays: {self.path}: array {key!r} cannot be read without pickle ({exc})",
                hint="save strings as np.array(values, dtype=str), numbers with a numeric dtype",
            ) from None
        if array.ndim == 0:
            raise DataError(
                f"arrays: {self.path}: array {key!r} is a scalar, not one entry per example"
            )
        return array


def _row_keys(arrays: list[np.ndarray]) -> list[bytes]:
    """A digest of each example's contents across ``arrays``: equal examples share a key, so a
    duplicate is never in train and test."""
    keys = []
    for i in range(len(arrays[0])):
        h = hashlib.blake2b(digest_size=16)
        for array in arrays:
            h.update(np.ascontiguousarray(array[i]).tobytes())
        keys.append(h.digest())
    return keys


def _targets(
    values: np.ndarray, key: str, class_names: list[str] | None, where: str
) -> tuple[torch.Tensor, list[str]]:
    """Targets and class names: integers are class indices, strings class names (indices in
    sorted order), floats regression values."""
    if values.dtype.kind in "US":
        labels = values.astype(str)
        names = list(class_names) if class_names is not None else sorted(set(labels.tolist()))
        index = {name: j for j, name in enumerate(names)}
        unknown = sorted(set(labels.tolist()) - set(index))
        if unknown:
            raise DataError(
                f"{where}: targets {key!r} hold labels {unknown[:5]} not in class_names",
                hint=f"class_names: {names}",
            )
        return torch.tensor([index[x] for x in labels.tolist()], dtype=torch.int64), names
    if values.dtype.kind in "biu":
        if values.ndim != 1:
            raise DataError(
                f"{where}: class targets {key!r} must have shape (N,), got {values.shape}"
            )
        labels = values.astype(np.int64)
        if len(labels) and labels.min() < 0:
            raise DataError(f"{where}: targets {key!r} hold {labels.min()}; classes start at 0")
        k = len(class_names) if class_names is not None else int(labels.max(initial=-1)) + 1
        if len(labels) and labels.max() >= k:
            raise DataError(
                f"{where}: targets {key!r} hold class {labels.max()}, but class_names names "
                f"only {k} classes",
                hint="give one class name per class index 0..K-1",
            )
        names = list(class_names) if class_names is not None else [str(j) for j in range(k)]
        return torch.from_numpy(np.ascontiguousarray(labels)), names
    if values.dtype.kind == "f":
        if class_names is not None:
            raise DataError(
                f"{where}: targets {key!r} are {values.dtype} (regression) but class_names "
                "are given",
                hint="save class targets as integers: y.astype(np.int64)",
            )
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)), []
    raise DataError(
        f"{where}: targets {key!r} have dtype {values.dtype}; expected integers (classes), "
        "strings (class names) or floats (regression)"
    )


def _column(values: np.ndarray) -> Any:
    """A field column: strings as a list of str (a text field), everything else a tensor."""
    if values.dtype.kind in "US":
        return values.astype(str).tolist()
    return torch.from_numpy(np.ascontiguousarray(values))


@DATA_SOURCES.register("arrays")
def load(
    split: str,
    path: str,
    fields: dict[str, str] | None = None,
    targets: str | None = None,
    groups: str | None = None,
    split_key: str | None = None,
    class_names: list[str] | None = None,
    sides: dict[str, str | list[str]] | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
) -> Split:
    """The ``split`` of the arrays in ``path`` (an ``.npz``, or a folder of ``<key>.npy``).

    ``fields`` maps field names to array keys (default: every array not named by ``targets``,
    ``groups`` or ``split_key``, each a field of its own key); a string array becomes a text
    field. ``targets`` names the targets array: integers are class indices (class names
    ``class_names``, default ``"0".."K-1"``), strings are class names (indices in sorted order,
    or in ``class_names`` order), floats are regression targets (float32, no class names).
    ``sides`` says which field each view reads (needed with several fields).

    The split: with ``split_key``, an array of split names (``train``, ``val``, ``test``); else
    by a stable hash of each example's group (``groups``, an array of ids) or, without groups,
    of its contents, ``test_fraction`` of them in ``test`` and ``val_fraction`` in ``val``.
    No group is in two splits. ``meta["index"]`` is each example's row in the arrays.
    """
    file = Path(path).expanduser()
    where = f"arrays: {file}"
    data = _Arrays(file)
    roles = {"targets": targets, "groups": groups, "split_key": split_key}
    special = {role: (key, data[key]) for role, key in roles.items() if key is not None}
    taken = {key for key, _ in special.values()}
    mapping = dict(fields) if fields is not None else {k: k for k in data.keys if k not in taken}
    if not mapping:
        raise DataError(
            f"{where} has no arrays left for fields (it holds {data.keys}, all named as targets, "
            "groups or split_key)"
        )
    if len(mapping) > 1 and not sides:
        raise ConfigError(
            f"arrays: {len(mapping)} fields ({', '.join(mapping)}): say which one each view reads",
            hint=f"sides: {{teacher: {next(iter(mapping))}, student: ...}}, or name one field "
            "with fields: {input: KEY}",
        )
    columns = {name: data[key] for name, key in mapping.items()}
    lengths = {f"field {name!r} ({mapping[name]!r})": len(a) for name, a in columns.items()}
    lengths.update({f"{role} ({key!r})": len(a) for role, (key, a) in special.items()})
    if len(set(lengths.values())) > 1:
        raise DataError(
            f"{where}: the arrays have different lengths: "
            + ", ".join(f"{what} {n}" for what, n in lengths.items()),
            hint="every array holds one entry per example along its first axis",
        )
    group_ids = special["groups"][1] if groups is not None else None
    if split_key is not None:
        split_names = special["split_key"][1]
        if split_names.dtype.kind not in "US":
            raise DataError(
                f"{where}: split_key {split_key!r} must be an array of split names (strings), "
                f"got {split_names.dtype}"
            )
        assignment = assign_by_column(split_names.tolist(), group_ids, where)
    else:
        keys = group_ids.tolist() if group_ids is not None else _row_keys(list(columns.values()))
        assignment = assign_by_hash(keys, test_fraction, val_fraction, where)
    index = select(assignment, split, where)
    target_values, names = None, list(class_names or [])
    if targets is not None:  # classes over the whole file, so every split numbers them alike
        target_values, names = _targets(special["targets"][1], targets, class_names, where)
        target_values = target_values[torch.from_numpy(index)]
    return Split(
        {name: _column(np.asarray(column[index])) for name, column in columns.items()},
        name=f"arrays/{split}",
        targets=target_values,
        class_names=names,
        sides=sides,  # type: ignore[arg-type]  # Split makes a list side a tuple
        groups=None if group_ids is None else group_ids[index].tolist(),
        meta={"index": index},
    )
