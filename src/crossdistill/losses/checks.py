"""Range checks for loss hyper-parameters, shared by every loss family."""

from __future__ import annotations

import math

from crossdistill.errors import ConfigError


class HyperParameterError(ConfigError, ValueError):
    """A loss hyper-parameter out of its range: a ValueError the CLI reports as a ConfigError."""


def check_range(who: str, name: str, value: float, *, positive: bool = False) -> float:
    """``value`` if finite and ``> 0`` (``positive``) or ``>= 0``; else a HyperParameterError."""
    bound = "> 0" if positive else ">= 0"
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise HyperParameterError(
            f"loss {who!r}: {name} must be a finite number {bound}, got {value!r}",
            hint=f"set {name} in the loss's params to a number {bound}",
        )
    return float(value)
