"""The pipeline-step registry and what the built-in steps share: errors that name the step and
where the recipe put it, and the checks of sizes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from crossdistill.errors import ConfigError, ShapeError
from crossdistill.registry import Registry, plugin_name

PIPELINE_STEPS: Registry[type[nn.Module]] = Registry("pipeline step", returns=nn.Module)


class Step(nn.Module):
    """Base of the built-in steps: a tensor in, a tensor out, and errors that say which step."""

    # The recipe path, "student.pipeline[1]", set by build_pipeline: the step itself is built
    # without it, and a step made in Python has none.
    where: str = ""

    def label(self) -> str:
        """The step in messages: ``student.pipeline[1] (normalize)`` or ``pipeline step 'x'``."""
        name = plugin_name(self)
        return f"{self.where} ({name})" if self.where else f"pipeline step {name!r}"

    def shape_error(self, x: torch.Tensor, problem: str, hint: str) -> ShapeError:
        """A :class:`ShapeError` for the input ``x``: ``<step>: <problem> (input shape ...)``."""
        return ShapeError(f"{self.label()}: {problem} (input shape {tuple(x.shape)})", hint=hint)

    def check_layout(self, x: torch.Tensor, ok: bool, layout: str) -> None:
        """Refuse the input ``x`` unless ``ok`` (its dimensions fit ``layout``, said in words)."""
        if not ok:
            raise self.shape_error(
                x,
                f"takes {layout}, got a {x.dim()}-d tensor",
                hint="check what the data gives this side (its view) and the steps before this one",
            )


def positive_ints(step: str, param: str, value: int | Sequence[int], n: int) -> tuple[int, ...]:
    """``value``, an int (repeated ``n`` times) or ``n`` ints, as a tuple of positive ints."""
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n or any(v < 1 for v in values):
        form = "a positive int" + (f" or {n} positive ints" if n > 1 else "")
        raise ConfigError(
            f"pipeline step {step!r}: {param} must be {form}, got {value!r}",
            hint=f"e.g. {param}: 32" + (f" or {param}: {[32] * n}" if n > 1 else ""),
        )
    return values
