"""Fashion-MNIST from the IDX files of the Debian package ``dataset-fashion-mnist``."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from crossdistill.data.idx import read_idx
from crossdistill.data.sources.base import DATA_SOURCES, check_split
from crossdistill.data.split import ArraySplit
from crossdistill.errors import DataError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_FILE_PREFIX = {"train": "train", "test": "t10k"}


@functools.lru_cache(maxsize=4)
def _decode(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decoded (images, labels); cached because gunzip + decode takes about a second."""
    prefix = Path(root) / _FILE_PREFIX[split]
    images_path = f"{prefix}-images-idx3-ubyte.gz"
    labels_path = f"{prefix}-labels-idx1-ubyte.gz"
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(
            f"{images_path}: expected uint8 images of shape (N, H, W),"
            f" got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected labels of shape (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"Fashion-MNIST {split}: {images_path} has {len(images)} images but {labels_path}"
            f" has {len(labels)} labels",
            hint="reinstall with `sudo apt-get install --reinstall dataset-fashion-mnist`",
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise DataError(
            f"{labels_path}: labels must lie in 0..{len(CLASS_NAMES) - 1},"
            f" found {labels.min()}..{labels.max()}"
        )
    return images, labels.astype(np.int64)


@DATA_SOURCES.register("fashion_mnist")
def load(split: str, root: str = DEFAULT_ROOT) -> ArraySplit:
    """Fashion-MNIST ``split`` ("train": 60,000, "test": 10,000) as uint8 (N, 1, 28, 28).

    The tensors share memory with an in-process cache: treat them as read-only.
    """
    check_split(split, "fashion_mnist")
    images, labels = _decode(str(Path(root)), split)
    return ArraySplit(
        inputs=torch.from_numpy(images).unsqueeze(1),
        targets=torch.from_numpy(labels),
        class_names=list(CLASS_NAMES),
        name=f"fashion_mnist/{split}",
    )
