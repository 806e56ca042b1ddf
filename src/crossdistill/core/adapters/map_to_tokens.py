"""``map_to_tokens``: a CNN feature map to ViT tokens."""

from __future__ import annotations

import torch
from torch import nn

from crossdistill.core.adapters._grid import resample, token_grid
from crossdistill.core.adapters.base import ADAPTERS, Adapter, Shape
from crossdistill.core.taps import Layout


@ADAPTERS.register("map_to_tokens")
class MapToTokens(Adapter):
    """``(C, H, W) → (N', D')`` with ``N' = g²`` or ``1 + g²`` (a CLS token first).

    The map is resampled to the teacher's ``g × g`` patch grid, each cell becomes a token
    projected ``C → D'``, and where the teacher has a CLS token the adapter supplies the mean of
    the projected tokens in its place (a CNN has no CLS token; the mean is what a pooled CNN
    feature would be).
    """

    priority = 20

    def __init__(self, student_shape: Shape, teacher_shape: Shape) -> None:
        super().__init__()
        grid = token_grid(teacher_shape[0])
        assert grid is not None  # checked by bridges()
        self.side, self.cls = grid
        self.proj = nn.Linear(student_shape[0], teacher_shape[1])

    @classmethod
    def connects(cls, student: Shape, teacher: Shape, s: Layout, t: Layout) -> bool:
        return (s, t) == ("NCHW", "NLD") and token_grid(teacher[0]) is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(resample(x, (self.side, self.side)).flatten(2).transpose(1, 2))
        if self.cls:
            tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return tokens
