"""Text data: a split of sentences held in memory, and distillation examples over it.

A text example is ``{"id": int, "views": {name: str}, "aug": float32 (0,)}`` plus ``"target"``
(an int64 scalar) when the split is labelled. ``default_collate`` turns the string views into
lists of ``str``: a text batch is ``{"views": {"teacher": [str, ...], ...}, ...}``, and each model
tokenizes its own view. Text has no augmentations yet, so every slot of every epoch is the same
example and the recorded parameters are empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from crossdistill.data.augment import NoAugment
from crossdistill.data.checks import check_index, check_slots, check_views
from crossdistill.errors import ConfigError, DataError

DEFAULT_VIEWS: tuple[str, ...] = ("teacher", "student")


@dataclass
class TextSplit:
    """One split of a text data set: sentences, optional class targets, class names."""

    texts: list[str]
    targets: torch.Tensor | None  # (N,) int64 class indices, or None when unlabelled
    class_names: list[str]
    name: str  # e.g. "sentences/train"

    def __post_init__(self) -> None:
        if not isinstance(self.texts, list) or not all(isinstance(t, str) for t in self.texts):
            raise DataError(f"text split {self.name!r}: texts must be a list of str")
        if self.targets is None:
            return
        if self.targets.dim() != 1 or self.targets.dtype != torch.int64:
            raise DataError(
                f"text split {self.name!r}: targets must be int64 of shape (N,), got"
                f" {self.targets.dtype} {tuple(self.targets.shape)}"
            )
        if len(self.targets) != len(self.texts):
            raise DataError(
                f"text split {self.name!r} has {len(self.texts)} texts but"
                f" {len(self.targets)} targets"
            )

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class TextDataset(Dataset):
    """Examples ``{id, views: {"teacher": str, "student": str}, target?, aug}`` from a TextSplit.

    The interface mirrors :class:`~crossdistill.data.dataset.DistillDataset` (``set_epoch``,
    ``slot_params``, ``example``) so a knowledge store treats text and images alike; with no
    augmentation every slot's parameters are empty.
    """

    def __init__(
        self,
        split: TextSplit,
        augmentation: NoAugment | None = None,
        seed: int = 0,
        views: Sequence[str] = DEFAULT_VIEWS,
        slots: int | None = None,
    ) -> None:
        if augmentation is not None and not isinstance(augmentation, NoAugment):
            raise ConfigError(
                f"text data has no augmentations yet, got {augmentation!r}",
                hint="leave `augmentation` unset (or 'none') for text data",
            )
        if int(seed) < 0:
            raise ConfigError(f"seed must be non-negative, got {seed}")
        if slots is not None and (int(slots) != slots or slots < 1):
            raise ConfigError(f"augment_slots must be a positive integer, got {slots!r}")
        self.split = split
        self.augmentation = NoAugment()
        self.seed = int(seed)
        self.views = check_views(views)
        self.slots = check_slots(slots)
        self.epoch = 0

    @property
    def class_names(self) -> list[str]:
        return self.split.class_names

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    def set_epoch(self, epoch: int) -> None:
        """Kept for interface parity; nothing in a text example depends on the epoch."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def slot_params(self, i: int, k: int) -> np.ndarray:
        """The (empty) augmentation parameters of slot ``k`` of example ``i``."""
        check_index(i, len(self))
        if int(k) < 0 or (self.slots is not None and int(k) >= self.slots):
            raise IndexError(f"slot {k} out of range for {self.slots} slots")
        return np.empty(0, dtype=np.float64)

    def example(self, i: int, params: np.ndarray | torch.Tensor) -> dict[str, Any]:
        """Example ``i`` built with augmentation ``params`` (always empty for text)."""
        i = check_index(i, len(self))
        if np.asarray(params).size != 0:
            raise DataError(
                f"text example {i}: got {np.asarray(params).size} augmentation parameters,"
                " text takes none",
                hint="recorded parameters must come from the same data configuration",
            )
        text = self.split.texts[i]
        out: dict[str, Any] = {
            "id": i,
            "views": {name: text for name in self.views},
            "aug": torch.empty(0, dtype=torch.float32),
        }
        if self.split.targets is not None:
            out["target"] = torch.tensor(int(self.split.targets[i]), dtype=torch.int64)
        return out

    def example_size(self, i: int) -> int:
        """The length of text ``i``: a store writer batches texts of similar size together."""
        return len(self.split.texts[i])

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.example(i, self.slot_params(i, 0))

    def __repr__(self) -> str:
        return (
            f"TextDataset({self.split.name!r}, n={len(self)}, seed={self.seed},"
            f" views={list(self.views)}, slots={self.slots})"
        )
