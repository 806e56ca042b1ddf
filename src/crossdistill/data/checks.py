"""Argument checks and conversions shared by the dataset classes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crossdistill.errors import ConfigError


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """``views`` as a tuple of distinct names (at least one)."""
    views = tuple(views)
    if not views or len(set(views)) != len(views):
        raise ConfigError(f"views must be a non-empty list of distinct names, got {list(views)}")
    return views


def check_index(i: int, n: int) -> int:
    """``i`` as an index into ``n`` examples (negative counts from the end)."""
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"example index {i} out of range for {n} examples")
    return i


def check_slots(slots: int | None) -> int | None:
    """``slots`` (K recorded augmentations per example) as an int, or None."""
    if slots is not None and (int(slots) != slots or slots < 1):
        raise ConfigError(f"augment_slots must be a positive integer, got {slots!r}")
    return None if slots is None else int(slots)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1]; anything else to a float32 copy (never a view, so a
    batch never aliases the data it came from). Always in the standard (row-major) strides:
    a gather from data laid out otherwise (a channel axis of size 1 with stride 1, say) would
    keep that layout, and a convolution may round differently on it than on the same values
    collated example by example (a knowledge store's teacher pass)."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    return x.to(torch.float32, copy=True, memory_format=torch.contiguous_format)
