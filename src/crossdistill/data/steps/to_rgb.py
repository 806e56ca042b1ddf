"""The ``to_rgb`` step: a grey image as three channels."""

from __future__ import annotations

import torch

from crossdistill.data.steps._base import PIPELINE_STEPS, Step


@PIPELINE_STEPS.register("to_rgb")
class ToRGB(Step):
    """A 1-channel ``(B, 1, H, W)`` image repeated to 3 channels ``(B, 3, H, W)``.

    For a teacher made for colour images fed grey ones; other channel counts are refused.
    """

    def __init__(self) -> None:  # no parameters: without it, nn.Module's **kwargs would show
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():  # a traced shape is a tensor: checks would warn
            self.check_layout(x, x.dim() == 4, "(B, 1, H, W) images")
            if x.shape[1] != 1:
                hint = "remove to_rgb, or keep one channel first (select with channels: [0])"
                if x.shape[1] == 3:
                    hint = "remove to_rgb: the images have 3 channels already"
                raise self.shape_error(
                    x, f"repeats a 1-channel image, got {x.shape[1]} channels", hint
                )
        return x.repeat(1, 3, 1, 1)  # a copy, not expand's view: a model may write its input
