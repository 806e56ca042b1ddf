"""``conv1x1``: a 1×1 convolution between feature maps, resampling the grid when it differs."""

from __future__ import annotations

import torch
from torch import nn

from crossdistill.core.adapters._grid import resample
from crossdistill.core.adapters.base import ADAPTERS, Adapter, Shape
from crossdistill.core.taps import Layout


@ADAPTERS.register("conv1x1")
class Conv1x1(Adapter):
    """``(C, H, W) → (C', H', W')``: a 1×1 conv (+ BatchNorm, as in the regressors of FitNets
    follow-ups such as OFD) on the student map, resampled to ``H' × W'`` when the grids differ.
    For 1-D maps (NCT) see ``conv1x1_1d``."""

    priority = 10

    def __init__(self, student_shape: Shape, teacher_shape: Shape, norm: bool = True) -> None:
        super().__init__()
        c_in, c_out = student_shape[0], teacher_shape[0]
        self.size = tuple(teacher_shape[1:])
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=not norm)
        self.norm = nn.BatchNorm2d(c_out) if norm else nn.Identity()

    @classmethod
    def connects(cls, student: Shape, teacher: Shape, s: Layout, t: Layout) -> bool:
        return s == t == "NCHW"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(resample(x, self.size)))  # type: ignore[arg-type]
