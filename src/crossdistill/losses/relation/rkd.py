"""Relational knowledge distillation: distance and angle potentials."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ShapeError
from crossdistill.losses.checks import HyperParameterError, check_range
from crossdistill.losses.pair import PairLoss
from crossdistill.losses.registry import LOSSES

# Squared distances are clamped here before the square root, as in the authors' code: a
# duplicated sample then has a tiny positive distance instead of an infinite sqrt gradient.
_EPS = 1e-12


def centered_gram(x: torch.Tensor) -> torch.Tensor:
    """``X Xᵀ`` of ``x`` flattened and centred: distances and angles ignore translation, and
    centring keeps ``‖x_i‖² + ‖x_j‖² − 2 x_iᵀx_j`` from cancelling catastrophically."""
    x = x.flatten(1)
    x = x - x.mean(dim=0, keepdim=True)
    return x @ x.T


def distances(gram: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances from a Gram matrix, exactly 0 on the diagonal."""
    sq = gram.diagonal()
    d2 = sq[:, None] + sq[None, :] - 2 * gram
    off = ~torch.eye(len(gram), dtype=torch.bool, device=gram.device)
    # 1 on the diagonal keeps sqrt's gradient finite there; the diagonal is zeroed afterwards.
    d2 = torch.where(off, d2.clamp_min(_EPS), torch.ones_like(d2))
    return torch.where(off, d2.sqrt(), torch.zeros_like(d2))


def distance_potential(gram: torch.Tensor) -> torch.Tensor:
    """``ψ_D(i, j) = ‖x_i − x_j‖ / μ``, ``μ`` the mean distance over pairs ``i ≠ j``."""
    d = distances(gram)
    b = len(d)
    return d / (d.sum() / (b * (b - 1)))


def angle_potential(gram: torch.Tensor) -> torch.Tensor:
    """``ψ_A[i, j, k] = cos ∠(x_j, x_i, x_k) = ⟨e_ij, e_ik⟩``, ``e_ij = (x_j − x_i)/‖x_j − x_i‖``
    (vertex ``x_i``), computed from the Gram matrix in ``O(B³)`` instead of ``O(B²·D)``; 0 where
    ``j = i`` or ``k = i`` (no direction)."""
    d = distances(gram)
    off = d > 0
    inv = torch.where(off, 1 / torch.where(off, d, torch.ones_like(d)), torch.zeros_like(d))
    sq = gram.diagonal()
    # ⟨x_j − x_i, x_k − x_i⟩ = G_jk − G_ij − G_ik + G_ii
    dots = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + sq[:, None, None]
    return dots * inv[:, :, None] * inv[:, None, :]


@LOSSES.register("rkd")
class RKDLoss(PairLoss):
    r"""Relational knowledge distillation (Park et al., CVPR 2019, arXiv:1904.05068).

    On features flattened to ``(B, D)``, with ``l_δ`` the Huber (smooth-L1, ``δ = 1``) loss:

    - distance: ``ψ_D(i, j) = ‖x_i − x_j‖ / μ``, ``μ = mean_{i≠j} ‖x_i − x_j‖``;
      ``L_D = (1 / B²) Σ_{i,j} l_δ(ψ_D^t(i, j), ψ_D^s(i, j))``
    - angle: ``ψ_A(i, j, k) = ⟨e_ij, e_ik⟩`` with ``e_ij`` the unit vector from ``x_i`` to
      ``x_j`` (0 when ``j = i``); ``L_A = (1 / B³) Σ_{i,j,k} l_δ(ψ_A^t, ψ_A^s)``
    - ``L = distance_weight · L_D + angle_weight · L_A``

    The paper sums ``l_δ`` over pairs and triplets; the means over all ``B²`` pairs and ``B³``
    triplets (degenerate ones included, where both sides are 0) are the authors' code and
    torchdistill's ``RKDLoss(reduction="mean")``, which this equals for the same factors.
    torchdistill has no default factors (its example uses 1 and 2, as do the authors'
    metric-learning runs); the defaults 25 and 50 here are those used for CIFAR-100
    classification in the CRD benchmark (RepDistiller) and mdistiller. Teacher potentials are
    not detached here (a teacher tensor normally carries no gradient anyway).

    Widths may differ. The loss is invariant to rotating, translating or uniformly rescaling
    either side's features. It needs at least 2 samples.
    """

    # log ranges around the paper's weights, 25 (distance) and 50 (angle)
    search_space: ClassVar[dict[str, dict]] = {
        "distance_weight": {"low": 5.0, "high": 100.0, "log": True},
        "angle_weight": {"low": 10.0, "high": 200.0, "log": True},
    }

    def __init__(
        self,
        student: str = "embedding",
        teacher: str = "embedding",
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
    ) -> None:
        super().__init__(student, teacher)
        self.distance_weight = check_range("rkd", "distance_weight", distance_weight)
        self.angle_weight = check_range("rkd", "angle_weight", angle_weight)
        if self.distance_weight == 0 and self.angle_weight == 0:
            raise HyperParameterError(
                "loss 'rkd': distance_weight and angle_weight are both 0, so the loss is 0",
                hint="set at least one of them > 0 (the defaults are 25 and 50)",
            )

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        if s.shape[0] < 2:
            raise ShapeError(
                "rkd compares distances between samples and needs a batch of at least 2; got "
                + self.where(s, t),
                hint="use a batch size of 2 or more (drop_last avoids a last batch of 1)",
            )
        g_s, g_t = centered_gram(s), centered_gram(t)
        loss = s.new_zeros(())
        if self.distance_weight:
            dist = F.smooth_l1_loss(distance_potential(g_s), distance_potential(g_t))
            loss = loss + self.distance_weight * dist
        if self.angle_weight:
            angle = F.smooth_l1_loss(angle_potential(g_s), angle_potential(g_t))
            loss = loss + self.angle_weight * angle
        return loss
