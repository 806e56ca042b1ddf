"""scikit-learn's bundled 8x8 digits (1,797 images): the tiny source the unit tests use."""

from __future__ import annotations

import functools

import numpy as np
import torch

from crossdistill.data.sources.base import DATA_SOURCES, check_split
from crossdistill.data.split import ArraySplit
from crossdistill.errors import ConfigError, DataError, require

NUM_EXAMPLES = 1797


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[np.ndarray, np.ndarray]:
    """All images as uint8 (N, 1, 8, 8) scaled from 0..16 to 0..255, and int64 labels."""
    datasets = require(
        "sklearn.datasets", "the 'digits' data source", "pip install scikit-learn", DataError
    )
    bunch = datasets.load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images[:, None, :, :], bunch.target.astype(np.int64)


def split_indices(n: int, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Disjoint, sorted train/test indices into ``range(n)`` from a seeded permutation."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"digits: test_fraction must lie strictly in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, min(n - 1, round(n * test_fraction)))
    return {"test": np.sort(perm[:n_test]), "train": np.sort(perm[n_test:])}


@DATA_SOURCES.register("digits")
def load(split: str, test_fraction: float = 0.2, seed: int = 0) -> ArraySplit:
    """The ``split`` of a deterministic ``seed``-ed train/test split of the digits data."""
    check_split(split, "digits")
    images, labels = _load_all()
    idx = split_indices(len(labels), test_fraction, seed)[split]
    return ArraySplit(
        # Fancy indexing copies, so the cached arrays are never shared with callers.
        inputs=torch.from_numpy(images[idx]),
        targets=torch.from_numpy(labels[idx]),
        class_names=[str(d) for d in range(10)],
        name=f"digits/{split}",
    )
