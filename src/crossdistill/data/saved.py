"""A Split saved to a folder, and read back: safetensors for tensors, JSON for texts, ``.npz``
for audio clips; never a pickle.

``<folder>/split.json`` says what each field is; ``tensors.safetensors`` holds the tensor fields,
the targets and numeric meta columns; ``texts.json`` the text fields (strings, or rows of
strings); ``<field>.npz`` each :class:`~crossdistill.data.clips.Clips` field. The ``saved_split``
data source reads such folders, so data built in Python once can be named in a recipe.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from crossdistill._util.files import replace_dir, write_json
from crossdistill.data.clips import Clips
from crossdistill.data.split import Split
from crossdistill.errors import DataError

FORMAT = "crossdistill.split"


def save_split(split: Split, folder: str | os.PathLike[str]) -> Path:
    """Write ``split`` to ``folder`` (replacing what is there, atomically); returns the folder.

    Lazy columns (a dataset read item by item) are read in full: tensors of one shape are
    stacked, strings listed. A field of anything else is a DataError naming it.
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tensors: dict[str, torch.Tensor] = {}
        texts: dict[str, Any] = {}
        kinds: dict[str, str] = {}
        for key, column in split.fields.items():
            kind, value = _column(column, f"split {split.name!r} field {key!r}")
            kinds[key] = kind
            if kind == "tensor":
                tensors[f"field/{key}"] = value
            elif kind == "clips":
                value.save(tmp / f"{key}.npz")
            else:
                texts[key] = value
        targets = None
        if split.targets is not None:
            targets, value = _column(split.targets, f"split {split.name!r} targets")
            if targets != "tensor":
                raise DataError(f"split {split.name!r}: targets must be numbers to be saved")
            tensors["targets"] = value
        meta: dict[str, str] = {}
        for key, column in split.meta.items():
            meta[key], value = _column(column, f"split {split.name!r} meta {key!r}")
            if meta[key] == "tensor":
                tensors[f"meta/{key}"] = value
            else:
                texts[f"meta/{key}"] = value
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
        write_json(tmp / "texts.json", texts)
        write_json(
            tmp / "split.json",
            {
                "format": FORMAT,
                "name": split.name,
                "fields": kinds,
                "targets": targets is not None,
                "class_names": split.class_names,
                "sides": split.sides,
                "default_side": split.default_side,
                "meta": meta,
            },
        )
        folder.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_split(folder: str | os.PathLike[str]) -> Split:
    """The Split a :func:`save_split` folder holds."""
    folder = Path(folder)
    try:
        info = json.loads((folder / "split.json").read_text())
        if info.get("format") != FORMAT:
            raise ValueError(f"format {info.get('format')!r}")
        tensors = load_file(str(folder / "tensors.safetensors"))
        texts = json.loads((folder / "texts.json").read_text())
        fields: dict[str, Any] = {}
        for key, kind in info["fields"].items():
            if kind == "tensor":
                fields[key] = tensors[f"field/{key}"]
            elif kind == "clips":
                fields[key] = Clips.load(folder / f"{key}.npz")
            else:
                fields[key] = texts[key]
        return Split(
            fields,
            name=info["name"],
            targets=tensors["targets"] if info["targets"] else None,
            class_names=info["class_names"],
            sides={view: _side(side) for view, side in info["sides"].items()},
            default_side=_side(info["default_side"]) if info["default_side"] else None,
            meta={
                key: tensors[f"meta/{key}"].numpy() if kind == "tensor" else texts[f"meta/{key}"]
                for key, kind in info["meta"].items()
            },
        )
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{folder} is not a readable saved split ({type(exc).__name__}: {exc})",
            hint="save it again with crossdistill.data.saved.save_split",
        ) from None


def _side(side: Any) -> Any:
    return side if isinstance(side, str) else tuple(side)


def _plain(item: Any) -> Any:
    return str(item) if isinstance(item, np.str_) else item


def _column(column: Any, what: str) -> tuple[str, Any]:
    """``(kind, value)`` of a column as it is saved: a tensor, clips, or JSON-able texts."""
    if isinstance(column, torch.Tensor):
        return "tensor", column.detach().cpu()
    if isinstance(column, np.ndarray) and column.dtype.kind in "biuf":
        return "tensor", torch.from_numpy(np.ascontiguousarray(column))
    if isinstance(column, Clips):
        return "clips", column
    items = [_plain(column[i]) for i in range(len(column))]
    if all(isinstance(x, str) for x in items):
        return "texts", items
    if all(isinstance(x, (list, tuple)) and all(isinstance(t, str) for t in x) for x in items):
        return "rows", [list(x) for x in items]
    try:
        return "tensor", torch.stack([torch.as_tensor(x) for x in items])
    except (TypeError, RuntimeError, ValueError):
        kinds = sorted({type(x).__name__ for x in items})
        raise DataError(
            f"{what}: cannot save items of type {kinds}",
            hint="a saved split holds tensors of one shape, strings, lists of strings or Clips",
        ) from None
