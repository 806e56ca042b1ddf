"""``linear``: a linear (or two-layer MLP) projector on the last dimension."""

from __future__ import annotations

import torch
from torch import nn

from crossdistill.core.adapters.base import ADAPTERS, Adapter, Shape
from crossdistill.core.taps import Layout


@ADAPTERS.register("linear")
class Linear(Adapter):
    """``(D,) → (D',)`` or ``(N, D) → (N, D')``: each vector or token projected alone.

    ``hidden`` > 0 makes it an MLP ``Linear(D, hidden) → GELU → Linear(hidden, D')``, the
    projector of e.g. SimKD/CLIP-style distillation; 0 gives the FitNets-style linear regressor.
    """

    priority = 10

    def __init__(self, student_shape: Shape, teacher_shape: Shape, hidden: int = 0) -> None:
        super().__init__()
        d_in, d_out = student_shape[-1], teacher_shape[-1]
        self.proj: nn.Module = (
            nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))
            if hidden > 0
            else nn.Linear(d_in, d_out)
        )

    @classmethod
    def connects(cls, student: Shape, teacher: Shape, s: Layout, t: Layout) -> bool:
        return s == t in ("ND", "NLD") and student[:-1] == teacher[:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
