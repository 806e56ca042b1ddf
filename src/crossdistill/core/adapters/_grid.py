"""Token grids: telling a CLS token from patch tokens, and resampling 2-D and 1-D feature maps."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def token_grid(n: int) -> tuple[int, int] | None:
    """``(side, cls)`` if ``n`` tokens are a square grid (``cls = 0``) or a CLS token followed by
    one (``cls = 1``); ``None`` otherwise. A square count is read as having no CLS token."""
    for cls in (0, 1):
        side = math.isqrt(n - cls) if n > cls else 0
        if side > 0 and side * side == n - cls:
            return side, cls
    return None


def resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, C, *size)``: average pooling when shrinking by a whole factor
    (each output cell summarises its input cells), bilinear interpolation otherwise."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h % size[0] == 0 and w % size[1] == 0:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def tokens_to_grid(x: torch.Tensor, side: int, cls: int) -> torch.Tensor:
    """``(B, cls + side², D)`` → ``(B, D, side, side)``, dropping the CLS token."""
    patches = x[:, cls:]
    return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def resample_1d(x: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, C, T)`` → ``(B, C, length)``: adaptive average pooling when shrinking (every input
    step lands in some output step's window, whatever the factor: strided 1-D CNNs give lengths
    such as 50 → 25 → 13), linear interpolation when growing."""
    t = x.shape[-1]
    if t == length:
        return x
    if t > length:
        return F.adaptive_avg_pool1d(x, length)
    return F.interpolate(x, size=length, mode="linear", align_corners=False)
