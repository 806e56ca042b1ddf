"""Per-side input pipelines: what each model does to its view before its forward.

The teacher and the student each own a pipeline (normalization, resolution, later a tokenizer), so
the two sides never have to share preprocessing. Steps are registered ``nn.Module`` s built from
the recipe's ``pipeline:`` list, and run on the model's device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.registry import Registry

PIPELINE_STEPS: Registry[type[nn.Module]] = Registry("pipeline step", returns=nn.Module)


@PIPELINE_STEPS.register("normalize")
class Normalize(nn.Module):
    """``(x - mean) / std`` per channel of a ``(B, C, ...)`` float tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if any(s <= 0 for s in std):
            raise ValueError(f"normalize: std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean)), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(list(std)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) * self.inv_std.view(shape)


@PIPELINE_STEPS.register("resize")
class Resize(nn.Module):
    """Bilinear resize of ``(B, C, H, W)`` images to ``size`` (a teacher may see a larger view)."""

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


def build_pipeline(steps: Sequence[Any] | None, where: str = "pipeline") -> nn.Module:
    """An ``nn.Sequential`` of the steps ``[{name, params}, ...]`` (plug-in specs: a registered
    name or ``package.module:Class``)."""
    modules, specs = [], []
    for i, step in enumerate(steps or []):
        spec = dict(step) if isinstance(step, Mapping) else step.model_dump()
        modules.append(PIPELINE_STEPS.build(spec["name"], spec.get("params"), f"{where}[{i}]"))
        specs.append({"name": spec["name"], "params": dict(spec.get("params") or {})})
    if not modules:
        return nn.Identity()
    pipeline = nn.Sequential(*modules)
    pipeline.plugin_spec = specs  # what a run records to build it again
    return pipeline
