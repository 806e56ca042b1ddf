"""``pool``: a map, a 1-D map or tokens pooled to one vector, then projected."""

from __future__ import annotations

import torch
from torch import nn

from crossdistill.core.adapters._grid import token_grid
from crossdistill.core.adapters.base import ADAPTERS, Adapter, Shape, layouts_of
from crossdistill.core.taps import Layout


@ADAPTERS.register("pool")
class Pool(Adapter):
    """``(C, H, W) → (D',)`` by global average pooling, ``(C, T) → (D',)`` (a 1-D map, NCT) by
    the mean over time, ``(N, D) → (D',)`` by the CLS token when there is one (``cls_token:
    true`` and ``N = 1 + g²``) or else the mean of the tokens; then a linear projection to
    ``D'``. The bridge of last resort: any map or tokens to a vector such as a teacher's
    embedding."""

    priority = 40

    def __init__(
        self,
        student_shape: Shape,
        teacher_shape: Shape,
        cls_token: bool = True,
        student_layout: Layout | None = None,
    ) -> None:
        super().__init__()
        layout, _ = layouts_of(student_shape, teacher_shape, student_layout)
        self.over_time = layout == "NCT"
        grid = token_grid(student_shape[0]) if layout == "NLD" else None
        self.take_cls = cls_token and grid is not None and grid[1] == 1
        channels = student_shape[-1] if layout == "NLD" else student_shape[0]
        self.proj = nn.Linear(channels, teacher_shape[0])

    @classmethod
    def connects(cls, student: Shape, teacher: Shape, s: Layout, t: Layout) -> bool:
        return s in ("NCHW", "NCT", "NLD") and t == "ND"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return self.proj(x.mean(dim=(2, 3)))
        if self.over_time:
            return self.proj(x.mean(dim=2))
        return self.proj(x[:, 0] if self.take_cls else x.mean(dim=1))
