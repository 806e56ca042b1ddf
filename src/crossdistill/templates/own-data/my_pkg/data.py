"""A data source: ``load(split, **params) -> Split``, named in a recipe by import path.

``crossdistill run`` imports modules of the folder it runs in, so ``data: {source:
my_pkg.data:load}`` finds this file when you run from the folder that holds ``my_pkg/``.
Replace the body of :func:`load` with your data; keep the signature. Without ``path`` it makes a
small synthetic data set (four classes of points in 16 dimensions), so the recipes run as they
are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from crossdistill.data import ArraySplit
from crossdistill.errors import DataError

CLASSES = ["a", "b", "c", "d"]


def load(split: str, path: str | None = None, seed: int = 0) -> ArraySplit:
    """The ``train`` or ``test`` split: from ``path`` (an ``.npz`` with arrays ``x_<split>``
    float ``(N, ...)`` and ``y_<split>`` int ``(N,)``), or synthetic when ``path`` is None."""
    if split not in ("train", "test"):
        raise DataError(f"my_pkg.data: no split {split!r}", hint="use train or test")
    if path is not None:
        if not Path(path).is_file():
            raise DataError(f"my_pkg.data: {path} does not exist", hint="set data.params.path")
        with np.load(path) as arrays:
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    else:
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(len(CLASSES), 16)) * 2.0  # the same for both splits
        rng = np.random.default_rng(seed + (1 if split == "train" else 2))
        y = rng.integers(0, len(CLASSES), size=800 if split == "train" else 200)
        x = centres[y] + rng.normal(size=(len(y), 16))
    return ArraySplit(
        inputs=torch.as_tensor(x, dtype=torch.float32),
        targets=torch.as_tensor(y, dtype=torch.int64),
        class_names=CLASSES,
        name=f"my_pkg/{split}",
    )
