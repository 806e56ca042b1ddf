"""Similarity-matrix distillation: the student's batch cosine similarities match the teacher's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import Knowledge
from crossdistill.losses.contrastive.affinity import drop_self
from crossdistill.losses.gather import gather_rows
from crossdistill.losses.pair import PairLoss
from crossdistill.losses.registry import LOSSES


@LOSSES.register("sim_mse")
class SimMSELoss(PairLoss):
    r"""Relational similarity-matrix distillation: the mean squared difference between the
    student's and the teacher's ``B × B`` cosine-similarity matrices of the batch.

    With ``x̂_i = x_i / ‖x_i‖`` (rows flattened) and ``C(x)_ij = x̂_i · x̂_j``::

        L = ‖C(s) − C(t)‖_F² / B²                       (exclude_diagonal: false)
        L = Σ_{i≠j} (C(s)_ij − C(t)_ij)² / (B (B − 1))    (exclude_diagonal: true, default)

    The diagonal is 1 on both sides (for non-zero rows), so excluding it only changes the
    divisor: the mean is then over the pairs that carry information. A batch of one has no pairs
    and gives 0.

    Provenance, stated plainly: this exact formula is not taken from one paper. It belongs to
    the *relational* family of Park et al., "Relational Knowledge Distillation" (CVPR 2019,
    arXiv:1904.05068), which transfers sample-to-sample relations instead of the samples'
    outputs (RKD's own relations are distances and angles, loss ``rkd``), and is closest to
    Tung & Mori's similarity-preserving KD (ICCV 2019, arXiv:1907.09682, loss ``sp``), which
    compares ``Q Qᵀ`` with each *row* L2-normalized after the product. Here the *vectors* are
    normalized before the product, so the entries are the cosines a sentence-embedding model is
    used through, and the comparison is a plain MSE.

    Student and teacher widths may differ (no adapter needed); the loss is invariant to
    rotating either side and to rescaling rows. Under DDP each rank's rows are compared with the
    rows of every rank (gathered with their gradients), so with equal per-rank batches the mean
    over ranks equals the single-process loss on the global batch.
    """

    def __init__(
        self,
        student: str = "embedding",
        teacher: str = "embedding",
        exclude_diagonal: bool = True,
    ) -> None:
        super().__init__(student, teacher)
        self.exclude_diagonal = exclude_diagonal

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        with torch.autocast(s.device.type, enabled=False):  # cosines in full precision
            s, t = F.normalize(s.flatten(1), dim=1), F.normalize(t.flatten(1), dim=1)
            (all_s, offset), (all_t, _) = gather_rows(s), gather_rows(t)
            c_s, c_t = s @ all_s.T, t @ all_t.T
            if self.exclude_diagonal:
                if all_s.shape[0] < 2:
                    return (s * 0).sum()  # no pairs; keeps the graph for backward
                c_s, c_t = drop_self(c_s, offset), drop_self(c_t, offset)
            return F.mse_loss(c_s, c_t)
