"""``image_folder``: your own images, one sub-folder per class.

``root/<class>/<image>`` (nested folders inside a class are fine), split by a stable hash of
each file's path or of its group; or ``root/<split>/<class>/<image>`` when every sub-folder of
``root`` is a split name (``train``, ``val``, ``test``), the folders being the split. Images are
decoded with Pillow into one uint8 ``(N, C, H, W)`` tensor, the ``input`` field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdistill.data.grouping import SPLIT_NAMES, assign_by_column, assign_by_hash, select
from crossdistill.data.sources.base import DATA_SOURCES
from crossdistill.data.split import Split
from crossdistill.errors import ConfigError, DataError, require

EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MODES: dict[str, int] = {"L": 1, "RGB": 3}  # Pillow mode -> channels
DEFAULT_TEST_FRACTION = 0.2


def _folders(path: Path) -> list[Path]:
    """Visible sub-folders, sorted by name (``.ipynb_checkpoints`` and the like are not
    classes)."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in extensions
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _size(size: int | list[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = [size, size] if isinstance(size, int) else list(size)
    if len(hw) != 2 or any(int(s) != s or s < 1 for s in hw):
        raise ConfigError(f"image_folder: size must be a positive int or [H, W], got {size!r}")
    return int(hw[0]), int(hw[1])


def _group_of(pattern: re.Pattern[str] | None, rel: str) -> str:
    """A file's group: the first capture group of ``pattern`` in its path (the whole match when
    the pattern has none); without a pattern, the path itself."""
    if pattern is None:
        return rel
    match = pattern.search(rel)
    if match is None:
        raise DataError(
            f"image_folder: the group pattern {pattern.pattern!r} does not match {rel}",
            hint="every file's path (relative to its class folder) must match `group`, e.g. "
            r"'^(subject\d+)_' for subject3_0001.png",
        )
    return match.group(1) if pattern.groups else match.group(0)


def _decode(image: Any, path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 ``(C, H, W)``; a file Pillow cannot decode is a DataError naming it."""
    try:
        with image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in a batch
            img = img.convert(mode)
            if size is not None:
                img = img.resize((size[1], size[0]), image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, image.DecompressionBombError) as exc:
        raise DataError(
            f"image_folder: cannot decode {path}: {type(exc).__name__}: {exc}",
            hint="the file is corrupt or not an image: replace or remove it",
        ) from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _find(
    base: Path, suffixes: tuple[str, ...], where: str
) -> tuple[bool, list[str], list[tuple[Path, Path, Path]]]:
    """Whether ``base`` has split folders, the class names (sorted, over every split folder, so
    every split numbers the classes alike), and ``(split folder, class folder, file)`` of every
    image."""
    top = _folders(base)
    by_split = bool(top) and all(p.name in SPLIT_NAMES for p in top)
    class_dirs = (
        [(s, c) for s in top for c in _folders(s)] if by_split else [(base, c) for c in top]
    )
    class_names = sorted({c.name for _, c in class_dirs})
    if not class_names:
        raise DataError(f"{where} has no class folders", hint="put each class in its own folder")
    files = [(s, c, f) for s, c in class_dirs for f in _images(c, suffixes)]
    if not files:
        raise DataError(
            f"{where}: its class folders hold no images ({', '.join(suffixes)})",
            hint="set `extensions` if your images have other suffixes",
        )
    return by_split, class_names, files


def _decode_all(
    paths: list[Path], mode: str, size: tuple[int, int] | None, where: str
) -> np.ndarray:
    """The images at ``paths`` as one uint8 ``(N, C, H, W)`` array."""
    image = require("PIL.Image", "the 'image_folder' data source", "pip install Pillow", DataError)
    arrays: list[np.ndarray] = []
    for path in paths:
        array = _decode(image, path, mode, size)
        if arrays and array.shape != arrays[0].shape:
            (_, h0, w0), (_, h, w) = arrays[0].shape, array.shape
            raise DataError(
                f"{where}: images have different sizes: {paths[0]} is {h0}x{w0}, {path} is "
                f"{h}x{w} (height x width)",
                hint="set size: [H, W] to resize every image to one size",
            )
        arrays.append(array)
    return np.stack(arrays)


@DATA_SOURCES.register("image_folder")
def load(
    split: str,
    root: str,
    mode: str = "RGB",
    size: int | list[int] | None = None,
    group: str | None = None,
    test_fraction: float | None = None,
    val_fraction: float | None = None,
    extensions: list[str] | None = None,
) -> Split:
    """The ``split`` of the images under ``root`` as uint8 ``(N, C, H, W)`` (field ``input``).

    Class names are the class folders' names, sorted (across every split folder, so class
    indices agree between splits). ``mode``: ``"L"`` (1 channel) or ``"RGB"`` (3).
    ``size``: ``[H, W]`` (or one int for a square) to resize every image to (bilinear); without
    it, images of different sizes are an error naming two of them. ``extensions``: the file
    suffixes read (default: png, jpg, jpeg, bmp, gif, tif, tiff, webp, any case); other files
    are ignored.

    Without split folders, an image is in ``test`` / ``val`` / ``train`` by a stable hash of its
    group, ``test_fraction`` (default 0.2) and ``val_fraction`` (default 0) of the groups held
    out. ``group`` is a regular expression searched in each file's path relative to its class
    folder (its first capture group, or the whole match, is the group: ``'^(subject\\d+)_'``);
    without it each file is its own group. With split folders and ``group``, a group found in
    two split folders is an error. ``meta["path"]`` is each image's path relative to ``root``.
    """
    if mode not in MODES:
        raise ConfigError(f"image_folder: mode must be one of {list(MODES)}, got {mode!r}")
    hw = _size(size)
    suffixes = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions or ())
    suffixes = suffixes or EXTENSIONS
    try:
        pattern = None if group is None else re.compile(group)
    except re.error as exc:
        raise ConfigError(f"image_folder: group is not a regular expression: {exc}") from None
    base = Path(root).expanduser()
    where = f"image_folder: {base}"
    if not base.is_dir():
        raise DataError(
            f"{where} is not a folder",
            hint="`root` holds one sub-folder per class (or per split, each with one per class)",
        )
    by_split, class_names, files = _find(base, suffixes, where)
    if by_split and (test_fraction is not None or val_fraction is not None):
        raise ConfigError(
            f"{where} has split folders; test_fraction and val_fraction split a folder of classes",
            hint="remove test_fraction / val_fraction, or move the class folders up to root",
        )
    paths = [f.relative_to(base).as_posix() for _, _, f in files]
    groups = None
    if pattern is not None:
        groups = [_group_of(pattern, f.relative_to(c).as_posix()) for _, c, f in files]
    if by_split:
        assignment = assign_by_column([s.name for s, _, _ in files], groups, where)
    else:
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        assignment = assign_by_hash(groups or paths, fraction, val_fraction or 0.0, where)
    index = select(assignment, split, where).tolist()
    return Split(
        {"input": torch.from_numpy(_decode_all([files[i][2] for i in index], mode, hw, where))},
        name=f"image_folder/{split}",
        targets=torch.tensor([class_names.index(files[i][1].name) for i in index]),
        class_names=class_names,
        groups=None if groups is None else [groups[i] for i in index],
        meta={"path": [paths[i] for i in index]},
    )
