"""Attention transfer."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ShapeError
from crossdistill.losses.checks import HyperParameterError, check_range
from crossdistill.losses.pair import PairLoss
from crossdistill.losses.registry import LOSSES


def energy(x: torch.Tensor, p: float) -> torch.Tensor:
    """``mean_c |x_c|^p`` over channels: ``(B, C, H, W) → (B, H, W)``, ``(B, N, D) → (B, N)``."""
    channel_dim = 1 if x.dim() == 4 else 2
    # x² needs no abs; pow's backward is one fused kernel (x * x would need two).
    powered = x.pow(2) if p == 2 else x.abs().pow(p)
    return powered.mean(dim=channel_dim)


def attention_map(a: torch.Tensor) -> torch.Tensor:
    """``a`` flattened per sample and divided by its L2 norm: ``(B, positions)``."""
    return F.normalize(a.flatten(1), dim=1)


@LOSSES.register("at")
class ATLoss(PairLoss):
    r"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017, arXiv:1612.03928).

    For a map ``F`` of shape ``(B, C, H, W)`` the spatial attention is
    ``Q = vec(mean_c |F_c|^p)`` (length ``H·W``) and its unit-norm version ``q = Q / ‖Q‖₂``. Then

    ``L = β/2 · (1 / (B·H·W)) Σ_b Σ_j (q^s_{b,j} − q^t_{b,j})²``

    which is the authors' code (``at_loss`` = mean of squared differences, weighted by ``β/2``
    with ``β = 1000``) and torchdistill's ``ATLoss(mode="code")`` times ``β/2``. The paper's
    Eq. 2 instead sums the (unsquared) ``p``-norm of the difference over samples; torchdistill
    calls that ``mode="paper"``. Channels may differ between student and teacher.

    Token sequences ``(B, N, D)`` (ViT) are read as ``N`` positions with ``D`` channels, so a
    ViT's tokens (without class token) can be compared with a CNN map with ``H·W = N``
    positions, flattened row-major as patch embeddings are.

    Spatial sizes must match; otherwise a ShapeError names both keys and shapes. With
    ``resample: true`` both energy maps are instead average-pooled (adaptive) to the smaller
    height and width before normalizing (tokens must then form a square grid).

    ``p >= 1`` so that the gradient of ``|F|^p`` is finite where ``F = 0`` (ReLU outputs).
    """

    # a log range around the paper's beta, 10^3
    search_space: ClassVar[dict[str, dict]] = {"beta": {"low": 100.0, "high": 10000.0, "log": True}}

    ranks = (3, 4)

    def __init__(
        self,
        student: str,
        teacher: str,
        p: float = 2.0,
        beta: float = 1000.0,
        resample: bool = False,
    ) -> None:
        super().__init__(student, teacher)
        self.p = check_range("at", "p", p, positive=True)
        if self.p < 1:
            raise HyperParameterError(
                f"loss 'at': p must be >= 1 (|F|^p has an infinite gradient at 0 otherwise), "
                f"got {p!r}",
                hint="use p: 2 as in the paper, or another number >= 1",
            )
        self.beta = check_range("at", "beta", beta)
        self.resample = resample

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        a_s, a_t = energy(s, self.p), energy(t, self.p)
        if a_s.shape[1:].numel() != a_t.shape[1:].numel() or (
            a_s.dim() == a_t.dim() == 3 and a_s.shape != a_t.shape
        ):
            a_s, a_t = self._match_positions(s, t, a_s, a_t)
        q_s, q_t = attention_map(a_s), attention_map(a_t)
        return self.beta / 2 * F.mse_loss(q_s, q_t)

    def _match_positions(
        self, s: torch.Tensor, t: torch.Tensor, a_s: torch.Tensor, a_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        where = self.where(s, t)
        if not self.resample:
            raise ShapeError(
                f"at compares attention maps position by position, but the spatial sizes "
                f"differ: {where}",
                hint="tap layers with the same resolution, or set `resample: true` in the "
                "loss's params to average-pool both maps to the smaller size",
            )
        grids = [self._grid(a, x, where) for a, x in ((a_s, s), (a_t, t))]
        size = (
            min(grids[0].shape[-2], grids[1].shape[-2]),
            min(grids[0].shape[-1], grids[1].shape[-1]),
        )
        pooled = [F.adaptive_avg_pool2d(g.unsqueeze(1), size).squeeze(1) for g in grids]
        return pooled[0], pooled[1]

    def _grid(self, a: torch.Tensor, x: torch.Tensor, where: str) -> torch.Tensor:
        """``a`` as ``(B, H, W)``: maps already are; ``N`` tokens must form a square."""
        if a.dim() == 3:
            return a
        side = math.isqrt(a.shape[1])
        if side * side != a.shape[1]:
            raise ShapeError(
                f"at cannot resample {a.shape[1]} tokens (not a square grid): {where}",
                hint="drop the class/register tokens with an adapter, or tap a layer with the "
                "same number of positions on both sides",
            )
        return a.reshape(a.shape[0], side, side)
