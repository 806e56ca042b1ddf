"""Seeded augmentations whose parameters are recorded per example.

An augmentation is split into ``sample`` (draw parameters from a generator) and ``apply`` (a pure
function of the image and the parameters), so the exact view a teacher saw can be re-created
later from the recorded parameters, e.g. by a knowledge store keyed by ``(id, aug)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from crossdistill.config import PluginSpec
from crossdistill.errors import ConfigError, DataError
from crossdistill.registry import Registry


@runtime_checkable
class Augmentation(Protocol):
    """Draws per-example parameters and applies them to a ``(C, H, W)`` float image."""

    num_params: int

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """float64 parameters of length ``num_params`` for an image of ``shape``."""
        ...

    def apply(self, x: torch.Tensor, params: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``x`` transformed by ``params``; must not depend on anything else."""
        ...


AUGMENTATIONS: Registry[type[Augmentation]] = Registry("augmentation", returns=Augmentation)


def _as_params(params: torch.Tensor | np.ndarray, expected: int, name: str) -> list[float]:
    if isinstance(params, torch.Tensor):
        params = params.detach().cpu().numpy()
    values = [float(v) for v in np.asarray(params, dtype=np.float64).reshape(-1)]
    if len(values) != expected:
        raise DataError(
            f"augmentation {name!r} takes {expected} parameters, got {len(values)}",
            hint="recorded parameters must come from the same augmentation configuration",
        )
    return values


@AUGMENTATIONS.register("none")
class NoAugment:
    """The identity; records no parameters."""

    num_params = 0

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return np.empty(0, dtype=np.float64)

    def apply(self, x: torch.Tensor, params: torch.Tensor | np.ndarray) -> torch.Tensor:
        _as_params(params, 0, "none")
        return x

    def __repr__(self) -> str:
        return "NoAugment()"


@AUGMENTATIONS.register("crop_flip")
class RandomCropFlip:
    """Zero-pad by ``padding``, crop back to ``H x W`` at ``(dy, dx)``, then maybe flip.

    Parameters are ``[dy, dx, flip]`` with ``dy, dx`` in ``0..2*padding`` and ``flip`` in {0, 1};
    ``[padding, padding, 0]`` is the identity.
    """

    num_params = 3

    def __init__(self, padding: int = 2, flip: bool = True) -> None:
        if int(padding) != padding or padding < 0:
            raise ConfigError(f"crop_flip: padding must be a non-negative integer, got {padding!r}")
        self.padding = int(padding)
        self.flip = bool(flip)

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        dy, dx = rng.integers(0, 2 * self.padding + 1, size=2)
        flip = rng.integers(0, 2) if self.flip else 0
        return np.array([dy, dx, flip], dtype=np.float64)

    def apply(self, x: torch.Tensor, params: torch.Tensor | np.ndarray) -> torch.Tensor:
        dy, dx, flip = (round(v) for v in _as_params(params, 3, "crop_flip"))
        p = self.padding
        if not (0 <= dy <= 2 * p and 0 <= dx <= 2 * p and flip in (0, 1)):
            raise DataError(
                f"crop_flip parameters {[dy, dx, flip]} out of range for padding {p}"
                f" (dy, dx in 0..{2 * p}, flip in 0..1)"
            )
        h, w = x.shape[-2:]
        # Shifting by (dy - p, dx - p) with zero fill equals pad-then-crop, without the padded copy.
        sy, sx = dy - p, dx - p
        out = torch.zeros_like(x)
        if abs(sy) >= h or abs(sx) >= w:  # shifted entirely out of frame (padding >= size)
            return out
        src_y, dst_y = slice(max(sy, 0), h + min(sy, 0)), slice(max(-sy, 0), h - max(sy, 0))
        src_x, dst_x = slice(max(sx, 0), w + min(sx, 0)), slice(max(-sx, 0), w - max(sx, 0))
        out[..., dst_y, dst_x] = x[..., src_y, src_x]
        return out.flip(-1) if flip else out

    def apply_batch(self, x: torch.Tensor, params: torch.Tensor | np.ndarray) -> torch.Tensor:
        """:meth:`apply` on every row of ``x`` ``(B, ..., H, W)`` with its ``params[b]``, in one
        gather from the zero-padded batch (bit-identical to the row-by-row loop)."""
        p = self.padding
        values = torch.as_tensor(np.asarray(params, dtype=np.float64)).round().long()
        if values.shape != (len(x), 3):
            raise DataError(
                f"crop_flip takes {len(x)} x 3 parameters for a batch of {len(x)}, got "
                f"{tuple(values.shape)}"
            )
        dy, dx, flip = values.unbind(1)
        bad = (dy < 0) | (dy > 2 * p) | (dx < 0) | (dx > 2 * p) | (flip < 0) | (flip > 1)
        if bool(bad.any()):  # the first bad row raises apply's own message
            first = int(bad.nonzero()[0, 0])
            self.apply(x[first], values[first].numpy())
        h, w = x.shape[-2:]
        flat = F.pad(x.reshape(len(x), -1, h, w), (p, p, p, p))  # (B, C, H + 2p, W + 2p)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
        batch = torch.arange(len(x))[:, None, None]
        out = flat[batch, :, rows, cols].permute(0, 3, 1, 2)  # advanced indices first: (B, H, W, C)
        flipped = flip.bool()
        out[flipped] = out[flipped].flip(-1)
        return out.reshape(x.shape).contiguous()

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


def build_augmentation(
    spec: PluginSpec | Mapping[str, Any] | str | Augmentation | None,
) -> Augmentation:
    """An augmentation from a plug-in spec ``{name, params}`` (a registered name or
    ``package.module:Class``), a bare name, or an Augmentation; ``None``: the identity."""
    if spec is None:
        return NoAugment()
    if isinstance(spec, PluginSpec):
        spec = spec.model_dump()
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        if isinstance(spec, Augmentation):
            return spec
        raise ConfigError(f"augmentation must be a mapping {{name, params}}, got {spec!r}")
    extra = sorted(set(spec) - {"name", "params"})
    if "name" not in spec or extra:
        raise ConfigError(
            f"augmentation {dict(spec)!r} is not {{name, params}}"
            + (f": {extra} belong under params" if extra and "name" in spec else ""),
            hint=f"e.g. {{name: crop_flip, params: {{padding: 2}}}}; known: "
            f"{', '.join(AUGMENTATIONS.names())}",
        )
    return AUGMENTATIONS.build(spec["name"], spec.get("params"), "data.augment")
