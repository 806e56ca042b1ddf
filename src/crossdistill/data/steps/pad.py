"""The ``pad`` step: a constant border, to a size or by given amounts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from crossdistill.data.steps._base import PIPELINE_STEPS, Step
from crossdistill.errors import ConfigError


@PIPELINE_STEPS.register("pad")
class Pad(Step):
    """A border of ``value`` around a ``(B, C, ...)`` tensor: to ``size``, or by ``amounts``.

    The padded dimensions are those after ``(B, C)``: ``(H, W)`` of an image, ``T`` of a signal.
    ``size``: an int for each of them, or one per dimension (``[h, w]``, ``[t]``); the margin is
    split in two, the odd sample after (``center_crop`` to the input's size undoes it).
    ``amounts``: an int for every side, or a ``(before, after)`` pair per dimension, flattened
    (``[top, bottom, left, right]`` for an image, ``[start, end]`` for a signal). Give one of the
    two.
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        amounts: int | Sequence[int] | None = None,
        value: float = 0.0,
    ) -> None:
        super().__init__()
        if (size is None) == (amounts is None):
            raise ConfigError(
                "pipeline step 'pad': give either size (pad to it) or amounts (pad by them)",
                hint="e.g. size: 32, or amounts: [2, 2, 2, 2] (top, bottom, left, right)",
            )
        self.size = None if size is None else _ints(size, "size", least=1)
        self.amounts = None if amounts is None else _ints(amounts, "amounts", least=0)
        self.value = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = x.dim() - 2
        if not torch.jit.is_tracing():  # a traced shape is a tensor: checks would warn
            self._check(x, dims)
        if self.size is not None:
            margins = [s - n for s, n in zip(_spread(self.size, dims), x.shape[2:], strict=True)]
            pairs = [(m // 2, m - m // 2) for m in margins]
        else:
            amounts = _spread(self.amounts, 2 * dims)
            pairs = [(amounts[2 * d], amounts[2 * d + 1]) for d in range(dims)]
        # F.pad lists the last dimension first
        flat = [side for pair in reversed(pairs) for side in pair]
        return F.pad(x, flat, mode="constant", value=self.value)

    def _check(self, x: torch.Tensor, dims: int) -> None:
        self.check_layout(x, dims >= 1, "a (B, C, ...) tensor: images or (B, C, T) signals")
        name, values, need = (
            ("size", self.size, dims)
            if self.size is not None
            else ("amounts", self.amounts, 2 * dims)
        )
        if len(values) not in (1, need):
            raise self.shape_error(
                x,
                f"{name} has {len(values)} values; the input's {dims} dimensions after (B, C) "
                f"need {need}",
                hint=f"give one int for all, or {need} ints",
            )
        if self.size is not None and any(
            s < n for s, n in zip(_spread(self.size, dims), x.shape[2:], strict=True)
        ):
            raise self.shape_error(
                x,
                f"cannot pad to {list(_spread(self.size, dims))}: the input is larger",
                hint="pad to at least the input's size; center_crop or resize makes it smaller",
            )


def _spread(values: tuple[int, ...], n: int) -> tuple[int, ...]:
    """One value for all ``n`` places, or the ``n`` values given."""
    return values * n if len(values) == 1 else values


def _ints(value: int | Sequence[int], name: str, least: int) -> tuple[int, ...]:
    values = (value,) if isinstance(value, int) else tuple(value)
    if not values or any(v < least for v in values):
        raise ConfigError(
            f"pipeline step 'pad': {name} must be ints of at least {least}, got {value!r}",
            hint="e.g. size: 32 or size: [32, 40]; amounts: 2 or amounts: [2, 2, 4, 4]",
        )
    return values
