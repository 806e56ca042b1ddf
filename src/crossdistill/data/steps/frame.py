"""The ``frame`` step: a signal cut into (overlapping) frames."""

from __future__ import annotations

import torch

from crossdistill.data.steps._base import PIPELINE_STEPS, Step, positive_ints


@PIPELINE_STEPS.register("frame")
class Frame(Step):
    """``(B, C, T)`` signals cut into frames: ``(B, F, C, size)``; ``(B, T)`` → ``(B, F, size)``.

    Frame ``f`` holds samples ``f * hop`` to ``f * hop + size - 1``; ``hop`` (default ``size``:
    frames side by side) may be smaller than ``size`` (frames overlap) or larger (samples
    skipped). ``F = 1 + (T - size) // hop``: the frames that fit whole, so the last
    ``(T - size) % hop`` samples are dropped (pad the signal first to keep them).
    """

    def __init__(self, size: int, hop: int | None = None) -> None:
        super().__init__()
        self.size = positive_ints("frame", "size", size, 1)[0]
        self.hop = positive_ints("frame", "hop", size if hop is None else hop, 1)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():  # a traced shape is a tensor: checks would warn
            self.check_layout(x, x.dim() in (2, 3), "(B, C, T) or (B, T) signals")
            if self.size > x.shape[-1]:
                raise self.shape_error(
                    x,
                    f"a frame of {self.size} samples is longer than the signal ({x.shape[-1]})",
                    hint=f"use a smaller size, or pad the signal to at least {self.size} first",
                )
        frames = x.unfold(-1, self.size, self.hop)  # (B, [C,] F, size)
        if frames.dim() == 4:
            frames = frames.transpose(1, 2)
        # a copy: unfold's overlapping view would make a model's .view() on it fail
        return frames.contiguous()
