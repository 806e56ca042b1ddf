"""``tokens_to_map``: ViT tokens to a CNN feature map."""

from __future__ import annotations

import torch
from torch import nn

from crossdistill.core.adapters._grid import resample, token_grid, tokens_to_grid
from crossdistill.core.adapters.base import ADAPTERS, Adapter, Shape
from crossdistill.core.taps import Layout


@ADAPTERS.register("tokens_to_map")
class TokensToMap(Adapter):
    """``(N, D) → (C', H', W')`` with ``N = g²`` or ``1 + g²``.

    The CLS token is dropped (a map has no place for it), the patch tokens are laid out on their
    ``g × g`` grid, projected ``D → C'`` by a 1×1 conv and resampled to ``H' × W'``.
    """

    priority = 20

    def __init__(self, student_shape: Shape, teacher_shape: Shape) -> None:
        super().__init__()
        grid = token_grid(student_shape[0])
        assert grid is not None  # checked by bridges()
        self.side, self.cls = grid
        self.size = tuple(teacher_shape[1:])
        self.conv = nn.Conv2d(student_shape[1], teacher_shape[0], 1)

    @classmethod
    def connects(cls, student: Shape, teacher: Shape, s: Layout, t: Layout) -> bool:
        return (s, t) == ("NLD", "NCHW") and token_grid(student[0]) is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = tokens_to_grid(x, self.side, self.cls)
        return resample(self.conv(grid), self.size)  # type: ignore[arg-type]
