"""The data layer: the Split protocol and its kinds, the one dataset of distillation examples
and its seeded loader, recorded augmentations, per-side pipeline steps, and data sources."""

from __future__ import annotations

from crossdistill.data.augment import (
    AUGMENTATIONS,
    Augmentation,
    NoAugment,
    RandomCropFlip,
    build_augmentation,
)
from crossdistill.data.clips import Clips
from crossdistill.data.dataset import (
    DistillDataset,
    EpochLoader,
    EpochSampler,
    as_distill_dataset,
    example_loader,
)
from crossdistill.data.idx import read_idx
from crossdistill.data.sources import DATA_SOURCES, load_source
from crossdistill.data.split import (
    ArraySplit,
    DatasetSplit,
    PairSplit,
    RankingSplit,
    Split,
    TextSplit,
)

__all__ = [
    "AUGMENTATIONS",
    "DATA_SOURCES",
    "ArraySplit",
    "Augmentation",
    "Clips",
    "DatasetSplit",
    "DistillDataset",
    "EpochLoader",
    "EpochSampler",
    "NoAugment",
    "PairSplit",
    "RandomCropFlip",
    "RankingSplit",
    "Split",
    "TextSplit",
    "as_distill_dataset",
    "build_augmentation",
    "example_loader",
    "load_source",
    "read_idx",
]
