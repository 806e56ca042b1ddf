"""The ``resize`` step: bilinear resampling of images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from crossdistill.data.steps._base import PIPELINE_STEPS, Step, positive_ints


@PIPELINE_STEPS.register("resize")
class Resize(Step):
    """Bilinear resize of ``(B, C, H, W)`` images to ``size`` (a teacher may see a larger view).

    ``size``: an int (square) or ``(h, w)``.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        self.size = positive_ints("resize", "size", size, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
