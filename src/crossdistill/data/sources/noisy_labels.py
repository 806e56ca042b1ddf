"""``noisy_labels``: another source's class labels, a fixed fraction of them corrupted.

Symmetric label noise (as in the noisy-label benchmarks of e.g. Han et al. 2018, Co-teaching,
arXiv:1804.06872): ``round(fraction * N)`` examples, drawn by ``seed``, get a class drawn
uniformly from the OTHER classes. Only the listed splits are corrupted (by default ``train``),
so that a run is selected and tested on clean labels. The corruption is recorded: the split's
``meta["clean_target"]`` holds the true labels and ``meta["noisy"]`` which examples changed.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

# The package, not ``load_source`` itself: this module is imported while the package's
# ``__init__`` registers its sources, before ``load_source`` is defined there.
import crossdistill.data.sources as sources
from crossdistill.data.sources.base import DATA_SOURCES
from crossdistill.data.split import Split
from crossdistill.errors import ConfigError, DataError


def _class_labels(split: Split) -> tuple[np.ndarray, int]:
    """The split's targets as int64 class indices, and the number of classes."""
    targets = split.targets
    if isinstance(targets, torch.Tensor):
        targets = targets.detach().cpu().numpy()
    values = np.asarray(targets) if isinstance(targets, (np.ndarray, list, tuple)) else None
    if values is None or values.ndim != 1 or values.dtype.kind not in "iu":
        what = "no targets" if targets is None else f"targets of {type(split.targets).__name__}"
        raise DataError(
            f"noisy_labels: {split.name!r} has {what}"
            + (f" {values.dtype} {values.shape}" if values is not None else "")
            + ", not one class label per example",
            hint="wrap a source whose targets are class indices of shape (N,)",
        )
    classes = max(len(split.class_names), int(values.max(initial=-1)) + 1)
    if classes < 2 or (len(values) and values.min() < 0):
        raise DataError(
            f"noisy_labels: {split.name!r} has {classes} class(es) and labels from "
            f"{values.min(initial=0)}: a label can only be flipped to another class",
            hint="wrap a source of at least two classes, labelled from 0",
        )
    return values.astype(np.int64), classes


def corrupt(labels: np.ndarray, classes: int, fraction: float, seed: int | list[int]) -> np.ndarray:
    """``labels`` with exactly ``round(fraction * N)`` of them, drawn by ``seed``, replaced by a
    class drawn uniformly from the other ``classes - 1``."""
    rng = np.random.default_rng(seed)
    flipped = rng.permutation(len(labels))[: round(fraction * len(labels))]
    noisy = labels.copy()
    # an offset of 1..K-1 classes: every other class equally likely, never the same one
    noisy[flipped] = (labels[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return noisy


@DATA_SOURCES.register("noisy_labels")
def load(
    split: str,
    source: str | Callable[..., Split],
    fraction: float,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    splits: list[str] | None = None,
) -> Split:
    """The ``split`` of the data source ``source`` (a registered name or
    ``package.module:Callable``, built with ``params``), with symmetric label noise in the
    ``splits`` listed (default ``["train"]``; any other split is the source's, untouched).

    ``fraction`` in [0, 1): the share of examples whose label is replaced by a uniformly drawn
    other class, exactly ``round(fraction * N)`` of them, drawn by ``seed`` (the same seed
    flips the same examples to the same classes). ``meta["clean_target"]`` keeps the true
    labels and ``meta["noisy"]`` (bool) marks the examples flipped.
    """
    if not 0 <= fraction < 1:
        raise ConfigError(
            f"noisy_labels: fraction {fraction} must lie in [0, 1)",
            hint="the share of labels to corrupt, e.g. 0.4; at 1 no label would be right",
        )
    inner = sources.load_source(source, split, **(params or {}))
    if split not in (["train"] if splits is None else splits):
        return inner
    labels, classes = _class_labels(inner)
    # each corrupted split draws its own examples, the same ones for the same seed
    noisy = corrupt(labels, classes, fraction, [seed, zlib.crc32(split.encode())])
    out = copy.copy(inner)  # the same kind of split (its fields, sides, groups), shared
    targets = torch.from_numpy(noisy)
    out.targets = targets if isinstance(inner.targets, torch.Tensor) else noisy
    out.name = f"noisy_labels/{inner.name}"
    out.meta = {
        **inner.meta,
        "clean_target": torch.from_numpy(labels),
        "noisy": torch.from_numpy(noisy != labels),
    }
    out._check()
    return out
