"""Per-side input pipelines: what each model does to its view before its forward.

The teacher and the student each own a pipeline (normalization, resolution, channels, frames), so
the two sides never have to share preprocessing. Steps are registered ``nn.Module`` s, one per
module of this package, built from the recipe's ``pipeline:`` list and run on the model's device.
They are tensor operations only, so that an export can trace them into the student's graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from crossdistill.data.steps._base import PIPELINE_STEPS, Step
from crossdistill.errors import ConfigError
from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["PIPELINE_STEPS", "Step", "build_pipeline"]


def build_pipeline(steps: Sequence[Any] | None, where: str = "pipeline") -> nn.Module:
    """An ``nn.Sequential`` of the steps ``[{name, params}, ...]`` (plug-in specs: a registered
    name or ``package.module:Class``)."""
    modules, specs = [], []
    for i, step in enumerate(steps or []):
        spec = dict(step) if isinstance(step, Mapping) else step.model_dump()
        path = f"{where}[{i}]"
        try:
            module = PIPELINE_STEPS.build(spec["name"], spec.get("params"), path)
        except ConfigError as exc:  # a step's own check of its params knows no recipe path
            if path in exc.message:
                raise
            raise ConfigError(f"{path}: {exc.message}", hint=exc.hint) from None
        if isinstance(module, Step):  # so that its errors on an input name the recipe path
            module.where = path
        modules.append(module)
        specs.append({"name": spec["name"], "params": dict(spec.get("params") or {})})
    if not modules:
        return nn.Identity()
    pipeline = nn.Sequential(*modules)
    pipeline.plugin_spec = specs  # what a run records to build it again
    return pipeline
