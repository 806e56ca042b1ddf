"""Data sources: named loaders that return a whole split as in-memory tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from crossdistill.errors import DataError
from crossdistill.registry import Registry

SPLITS: tuple[str, ...] = ("train", "test")


@dataclass
class ArraySplit:
    """One split of a data set, held in memory."""

    inputs: torch.Tensor  # (N, C, H, W) uint8 images, or float for non-image data
    targets: torch.Tensor  # (N,) int64 class indices
    class_names: list[str]
    name: str  # e.g. "fashion_mnist/train"

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise DataError(
                f"data split {self.name!r} has {len(self.inputs)} inputs but"
                f" {len(self.targets)} targets"
            )
        if self.targets.dim() != 1:
            raise DataError(
                f"data split {self.name!r}: targets must have shape (N,),"
                f" got {tuple(self.targets.shape)}"
            )

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# A source is ``load(split: str, **params) -> ArraySplit``.
DATA_SOURCES: Registry[Callable[..., ArraySplit]] = Registry("data source")


def check_split(split: str, source: str, valid: Sequence[str] = SPLITS) -> str:
    """``split`` if it is one of ``valid``, else a :class:`DataError` listing the valid ones."""
    if split not in valid:
        raise DataError(
            f"data source {source!r} has no split {split!r}",
            hint=f"valid splits: {', '.join(valid)}",
        )
    return split
