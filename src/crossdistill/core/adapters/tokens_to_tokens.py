"""``tokens_to_tokens``: ViT tokens on one patch grid to tokens on another."""

from __future__ import annotations

import torch
from torch import nn

from crossdistill.core.adapters._grid import resample, token_grid, tokens_to_grid
from crossdistill.core.adapters.base import ADAPTERS, Adapter, Shape
from crossdistill.core.taps import Layout


@ADAPTERS.register("tokens_to_tokens")
class TokensToTokens(Adapter):
    """``(N, D) → (N', D')`` between two grids (``g²`` or ``1 + g²`` tokens each).

    Patch tokens are projected ``D → D'`` and resampled from ``g × g`` to ``g' × g'``; a CLS
    token is projected on its own when both sides have one, and otherwise taken as the mean of
    the student's projected patch tokens. (Same token count: ``linear`` is chosen instead.)
    """

    priority = 30

    def __init__(self, student_shape: Shape, teacher_shape: Shape) -> None:
        super().__init__()
        (self.side, self.cls), (self.t_side, self.t_cls) = (
            token_grid(student_shape[0]),  # type: ignore[misc]
            token_grid(teacher_shape[0]),
        )
        self.proj = nn.Linear(student_shape[1], teacher_shape[1])

    @classmethod
    def connects(cls, student: Shape, teacher: Shape, s: Layout, t: Layout) -> bool:
        return (
            s == t == "NLD"
            and token_grid(student[0]) is not None
            and token_grid(teacher[0]) is not None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        grid = resample(tokens_to_grid(x, self.side, self.cls), (self.t_side, self.t_side))
        tokens = grid.flatten(2).transpose(1, 2)
        if self.t_cls:
            cls = x[:, :1] if self.cls else tokens.mean(dim=1, keepdim=True)
            tokens = torch.cat([cls, tokens], dim=1)
        return tokens
