"""In-batch contrastive distillation: each student embedding picks its own teacher embedding
out of the batch's."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.core.knowledge import Knowledge
from crossdistill.losses.checks import HyperParameterError, check_range
from crossdistill.losses.gather import gather_rows
from crossdistill.losses.pair import PairLoss
from crossdistill.losses.registry import LOSSES


@LOSSES.register("infonce")
class InfoNCELoss(PairLoss):
    r"""In-batch contrastive distillation with the teacher's embeddings as positives: InfoNCE
    (van den Oord et al. 2018, arXiv:1807.03748) between student and teacher embeddings, as in
    DistilCSE's contrastive knowledge distillation (Gao et al. 2021, arXiv:2112.05638) and, with
    the teacher as a frozen second tower, CLIP's symmetric loss (Radford et al., ICML 2021,
    arXiv:2103.00020).

    With ``ŝ_i = s_i / ‖s_i‖``, ``t̂_j = t_j / ‖t_j‖`` and ``z_ij = ŝ_i · t̂_j / τ``::

        L_rows = −(1/B) Σ_i log( exp(z_ii) / Σ_j exp(z_ij) )       (student → teacher)
        L_cols = −(1/B) Σ_j log( exp(z_jj) / Σ_i exp(z_ij) )       (teacher → student)
        L = L_rows                       (symmetric: false, default)
        L = (L_rows + L_cols) / 2        (symmetric: true; CLIP averages the two directions)

    Unlike ``crd`` there are no learned heads and no queue: the negatives are the other samples
    of the batch, and the student is compared with the teacher in the teacher's space, so both
    tensors must have the same shape — with a narrower student give the loss ``adapter: auto``
    (or ``linear``) in the recipe. Rows are flattened, so token states ``(B, N, D)`` work too.

    ``learnable_temperature``: ``log τ`` is a trained parameter of the loss (CLIP learns the
    logit scale ``1/τ``, the same thing), starting at ``temperature`` and clamped to
    ``τ ≥ min_temperature`` (CLIP clamps ``1/τ ≤ 100``, i.e. ``τ ≥ 0.01``); the Distiller trains
    and checkpoints it with the student. Otherwise ``τ`` is fixed.

    Under DDP each rank's rows are contrasted with the rows of every rank (gathered with their
    gradients), so the negatives span the global batch; with equal per-rank batches the mean
    over ranks equals the single-process loss on the global batch, gradients included.
    """

    ranks = (2, 3, 4)
    same_shape = True

    def __init__(
        self,
        student: str = "embedding",
        teacher: str = "embedding",
        temperature: float = 0.05,
        symmetric: bool = False,
        learnable_temperature: bool = False,
        min_temperature: float = 0.01,
    ) -> None:
        super().__init__(student, teacher)
        temperature = check_range("infonce", "temperature", temperature, positive=True)
        floor = check_range("infonce", "min_temperature", min_temperature, positive=True)
        if learnable_temperature and temperature < floor:
            raise HyperParameterError(
                f"loss 'infonce': temperature {temperature} is below min_temperature {floor}, "
                "where a learnable temperature is clamped",
                hint="raise temperature or lower min_temperature",
            )
        self.symmetric = symmetric
        self.min_temperature = floor
        self.log_temperature: nn.Parameter | None = None
        self.fixed_temperature = temperature
        if learnable_temperature:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    @property
    def temperature(self) -> torch.Tensor | float:
        """``τ`` now: the fixed value, or the clamped learned one (a tensor, with gradient)."""
        if self.log_temperature is None:
            return self.fixed_temperature
        return self.log_temperature.clamp(min=math.log(self.min_temperature)).exp()

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        with torch.autocast(s.device.type, enabled=False):  # cosines / τ in full precision
            s, t = F.normalize(s.flatten(1), dim=1), F.normalize(t.flatten(1), dim=1)
            (all_s, offset), (all_t, _) = gather_rows(s), gather_rows(t)
            labels = torch.arange(s.shape[0], device=s.device) + offset
            tau = self.temperature
            loss = F.cross_entropy(s @ all_t.T / tau, labels)
            if self.symmetric:
                # column j of z is row j of zᵀ: this rank's teacher rows against every student
                loss = (loss + F.cross_entropy(t @ all_s.T / tau, labels)) / 2
            return loss
