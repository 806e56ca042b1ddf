"""``conv1x1_1d``: a 1×1 convolution between 1-D maps (channels × time), resampling time."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from crossdistill.core.adapters._grid import resample_1d
from crossdistill.core.adapters.base import ADAPTERS, Adapter, Shape
from crossdistill.core.taps import Layout
from crossdistill.errors import ConfigError


@ADAPTERS.register("conv1x1_1d")
class Conv1x1_1d(Adapter):
    """``(C, T) → (C', T')`` between 1-D maps (layout NCT: audio, sensors): the student map is
    resampled to ``T'`` steps (adaptive average pooling when shrinking, linear interpolation when
    growing), then a ``Conv1d(C, C', 1)`` and a norm, as :class:`Conv1x1` does for 2-D maps.

    ``norm``: ``batch`` (BatchNorm1d over batch and time), ``group`` (GroupNorm with ``groups``
    groups, which must divide ``C'``; one group normalises each example over channels and time,
    independent of the batch size) or ``none`` (the conv keeps its bias).
    """

    priority = 10

    def __init__(
        self,
        student_shape: Shape,
        teacher_shape: Shape,
        norm: Literal["batch", "group", "none"] = "batch",
        groups: int = 1,
    ) -> None:
        super().__init__()
        c_in, (c_out, self.length) = student_shape[0], teacher_shape
        if norm == "group" and (groups < 1 or c_out % groups):
            raise ConfigError(
                f"conv1x1_1d: groups={groups} does not divide the teacher's {c_out} channels",
                hint=f"give a divisor of {c_out} (1 normalises over all channels)",
            )
        self.conv = nn.Conv1d(c_in, c_out, 1, bias=norm == "none")
        self.norm: nn.Module = nn.Identity()
        if norm == "batch":
            self.norm = nn.BatchNorm1d(c_out)
        elif norm == "group":
            self.norm = nn.GroupNorm(groups, c_out)

    @classmethod
    def connects(cls, student: Shape, teacher: Shape, s: Layout, t: Layout) -> bool:
        return s == t == "NCT"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(resample_1d(x, self.length)))
