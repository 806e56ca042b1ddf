"""Similarity-preserving knowledge distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import Knowledge
from crossdistill.losses.pair import PairLoss
from crossdistill.losses.registry import LOSSES


def similarity(x: torch.Tensor) -> torch.Tensor:
    """``G = row-normalize(Q Qᵀ)`` for ``Q`` = ``x`` flattened to ``(B, -1)``."""
    q = x.flatten(1)
    return F.normalize(q @ q.T, dim=1)


@LOSSES.register("sp")
class SPLoss(PairLoss):
    r"""Similarity-preserving KD (Tung & Mori, ICCV 2019, arXiv:1907.09682).

    With ``Q`` the features flattened to ``(B, D)`` and ``G = Q Qᵀ`` with each row divided by
    its L2 norm,

    ``L = (1 / B²) ‖G^t − G^s‖_F²``   (one layer pair).

    The paper (and RepDistiller's ``F.normalize(G)``) divides each row by its L2 norm.
    torchdistill 1.1.5's ``SPKDLoss`` calls ``normalize(G, 1)``, whose second positional
    argument is ``p``: it divides each row by its *L1* norm, a different quantity that no factor
    converts to this one (each row is rescaled by ``‖g‖₂ / ‖g‖₁``); the tests check that it
    equals this formula with L1 rows instead. Its ``batchmean`` reduction is this ``1 / B²``.
    The paper's weight ``γ`` is the loss weight in the recipe.

    Student and teacher widths may differ; the loss is invariant to any rotation of either
    side's features and to scaling them.
    """

    def __init__(self, student: str = "embedding", teacher: str = "embedding") -> None:
        super().__init__(student, teacher)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        return (similarity(t) - similarity(s)).pow(2).sum() / s.shape[0] ** 2
