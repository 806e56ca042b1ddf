"""The data layer: sources of labelled arrays, recorded augmentations, distillation examples."""

from __future__ import annotations

from crossdistill.data.augment import (
    AUGMENTATIONS,
    Augmentation,
    NoAugment,
    RandomCropFlip,
    build_augmentation,
)
from crossdistill.data.dataset import (
    DistillDataset,
    EpochLoader,
    EpochSampler,
    TensorPairDataset,
    as_distill_dataset,
    example_loader,
)
from crossdistill.data.idx import read_idx
from crossdistill.data.sources import DATA_SOURCES, ArraySplit, load_source
from crossdistill.data.text import TextDataset, TextSplit

__all__ = [
    "AUGMENTATIONS",
    "DATA_SOURCES",
    "ArraySplit",
    "Augmentation",
    "DistillDataset",
    "EpochLoader",
    "EpochSampler",
    "NoAugment",
    "RandomCropFlip",
    "TensorPairDataset",
    "TextDataset",
    "TextSplit",
    "as_distill_dataset",
    "build_augmentation",
    "example_loader",
    "load_source",
    "read_idx",
]
