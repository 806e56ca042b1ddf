"""``pool``: a map or tokens pooled to one vector, then projected."""

from __future__ import annotations

import torch
from torch import nn

from crossdistill.core.adapters._grid import token_grid
from crossdistill.core.adapters.base import ADAPTERS, Adapter, Shape


@ADAPTERS.register("pool")
class Pool(Adapter):
    """``(C, H, W) → (D',)`` by global average pooling, ``(N, D) → (D',)`` by the CLS token
    when there is one (``cls_token: true`` and ``N = 1 + g²``) or else the mean of the tokens;
    then a linear projection to ``D'``. The bridge of last resort: any map or tokens to a
    vector such as a teacher's embedding."""

    priority = 40

    def __init__(self, student_shape: Shape, teacher_shape: Shape, cls_token: bool = True) -> None:
        super().__init__()
        grid = token_grid(student_shape[0]) if len(student_shape) == 2 else None
        self.take_cls = cls_token and grid is not None and grid[1] == 1
        channels = student_shape[0] if len(student_shape) == 3 else student_shape[-1]
        self.proj = nn.Linear(channels, teacher_shape[0])

    @classmethod
    def bridges(cls, student: Shape, teacher: Shape) -> bool:
        return len(student) in (2, 3) and len(teacher) == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return self.proj(x.mean(dim=(2, 3)))
        return self.proj(x[:, 0] if self.take_cls else x.mean(dim=1))
