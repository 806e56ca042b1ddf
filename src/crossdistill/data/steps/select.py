"""The ``select`` step: some channels of a tensor, in a given order."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crossdistill.data.steps._base import PIPELINE_STEPS, Step
from crossdistill.errors import ConfigError


@PIPELINE_STEPS.register("select")
class Select(Step):
    """The channels ``channels`` (indices, in that order) of a ``(B, C, ...)`` tensor.

    An index may repeat (``[0, 0, 0]`` makes three copies of the first channel).
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        if not channels or any(c < 0 for c in channels):
            raise ConfigError(
                f"pipeline step 'select': channels must be channel indices (0, 1, ...), got "
                f"{list(channels)}",
                hint="e.g. channels: [0, 2] keeps the first and third channels",
            )
        self.channels = tuple(channels)
        self.register_buffer("index", torch.tensor(self.channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():  # a traced shape is a tensor: checks would warn
            self.check_layout(x, x.dim() >= 2, "a (B, C, ...) tensor")
            if max(self.channels) >= x.shape[1]:
                raise self.shape_error(
                    x,
                    f"channel {max(self.channels)} does not exist: the input has "
                    f"{x.shape[1]} channels",
                    hint=f"give indices from 0 to {x.shape[1] - 1}",
                )
        return x.index_select(1, self.index)
