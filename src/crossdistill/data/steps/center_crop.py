"""The ``center_crop`` step: the central window of images."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crossdistill.data.steps._base import PIPELINE_STEPS, Step, positive_ints


@PIPELINE_STEPS.register("center_crop")
class CenterCrop(Step):
    """The central ``(h, w)`` window of ``(B, C, H, W)`` images.

    ``size``: an int (square) or ``(h, w)``, at most the input's. The window starts at row
    ``(H - h) // 2`` and column ``(W - w) // 2`` (an odd margin leaves its extra row or column at
    the bottom or right), so that it undoes ``pad`` to the same size.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        self.size = positive_ints("center_crop", "size", size, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        if not torch.jit.is_tracing():  # a traced shape is a tensor: checks would warn
            self.check_layout(x, x.dim() == 4, "(B, C, H, W) images")
            if h > x.shape[-2] or w > x.shape[-1]:
                raise self.shape_error(
                    x,
                    f"a {h}x{w} crop is larger than the {x.shape[-2]}x{x.shape[-1]} input",
                    hint="crop to at most the input's size, or resize / pad the images first",
                )
        top = (x.shape[-2] - h) // 2
        left = (x.shape[-1] - w) // 2
        return x.narrow(-2, top, h).narrow(-1, left, w)
