"""The ``normalize`` step: per-channel standardization."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crossdistill.data.steps._base import PIPELINE_STEPS, Step
from crossdistill.errors import ConfigError


@PIPELINE_STEPS.register("normalize")
class Normalize(Step):
    """``(x - mean) / std`` per channel of a ``(B, C, ...)`` float tensor.

    ``mean`` and ``std`` each hold one value per channel, or one value for every channel.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if not mean or not std:
            raise ConfigError(
                f"pipeline step 'normalize': mean and std need at least one value each, got "
                f"mean={list(mean)}, std={list(std)}",
                hint="one value per channel, e.g. mean: [0.5], std: [0.25]",
            )
        if any(s <= 0 for s in std):
            raise ConfigError(
                f"pipeline step 'normalize': std must be positive, got {list(std)}",
                hint="std is the data's standard deviation per channel",
            )
        self.counts = {"mean": len(mean), "std": len(std)}
        self.register_buffer("mean", torch.tensor(list(mean)), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(list(std)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():  # a traced shape is a tensor: checks would warn
            self._check(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) * self.inv_std.view(shape)

    def _check(self, x: torch.Tensor) -> None:
        self.check_layout(x, x.dim() >= 2, "a (B, C, ...) tensor")
        channels = x.shape[1]
        for name, n in self.counts.items():
            if n not in (1, channels):  # broadcasting would silently make n channels
                hint = f"give one {name} value per channel ({channels}) or one value for all"
                if channels == 1:
                    hint = f"add to_rgb before normalize (1 channel to 3), or {hint}"
                has = f"{channels} channel" + ("s" if channels != 1 else "")
                raise self.shape_error(x, f"{name} has {n} values but the input has {has}", hint)
