"""In-batch contrastive loss whose hard negatives are weighted by a cross-encoder teacher."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ShapeError
from crossdistill.losses.checks import check_range
from crossdistill.losses.gather import gather_rows
from crossdistill.losses.pair import as_float
from crossdistill.losses.registry import LOSSES, Loss, Needs


@LOSSES.register("inbatch_weighted")
class InBatchWeightedLoss(Loss):
    r"""InfoNCE over every candidate of the batch, with the query's own hard negatives weighted
    by the teacher.

    With query embeddings ``q_i`` ``(B, D)``, candidate embeddings ``c_j`` (all ``B·C`` of the
    batch, of every rank under DDP), ``z_ij = sim(q_i, c_j) / τ`` (cosine or dot) and ``p(i)``
    query ``i``'s own positive (its candidate 0)::

        L = (1/B) Σ_i [ −z_ip(i) + log( e^{z_ip(i)} + Σ_{j ≠ p(i)} w_ij e^{z_ij} ) ]

    The weights: for ``i``'s own negatives ``k ≥ 1``, ``w_ik = σ((t_i0 − t_ik) / τ_w)``, the
    teacher's (Bradley–Terry) probability that the positive beats that negative — a negative
    the teacher scores above the positive is likely an unlabelled positive and counts less, the
    soft form of RocketQA's cross-encoder denoising (Qu et al., NAACL 2021, arXiv:2010.08191);
    for other queries' candidates ``w = 1``, except a candidate whose ``candidate_ids`` equals
    ``i``'s positive's (the same text, e.g. two queries of one synset in a batch) gets
    ``w = 0``. With ``teacher_weights: false`` every weight is 1 (but the repeated-text mask):
    sentence-transformers' ``MultipleNegativesRankingLoss`` with hard negatives at scale
    ``1/τ`` (tested against it). The teacher's scores get no gradient.
    """

    def __init__(
        self,
        student_query: str = "query",
        student_candidates: str = "candidates",
        student_ids: str = "candidate_ids",
        teacher: str = "scores",
        temperature: float = 0.05,
        weight_temperature: float = 1.0,
        similarity: Literal["cosine", "dot"] = "cosine",
        teacher_weights: bool = True,
    ) -> None:
        super().__init__()
        self.query_key, self.candidates_key = student_query, student_candidates
        self.ids_key, self.teacher_key = student_ids, teacher
        self.temperature = check_range(
            "inbatch_weighted", "temperature", temperature, positive=True
        )
        self.weight_temperature = check_range(
            "inbatch_weighted", "weight_temperature", weight_temperature, positive=True
        )
        self.similarity = similarity
        self.teacher_weights = teacher_weights

    def needs(self) -> Needs:
        teacher = (self.teacher_key,) if self.teacher_weights else ()
        return Needs((self.query_key, self.candidates_key), teacher)

    def _tensors(
        self, student: Knowledge, teacher: Knowledge
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        q, c = as_float(student[self.query_key]), as_float(student[self.candidates_key])
        t = as_float(teacher[self.teacher_key].detach()) if self.teacher_weights else None
        ids = student.get(self.ids_key)
        shapes = f"query {tuple(q.shape)}, candidates {tuple(c.shape)}"
        if t is not None:
            shapes += f", teacher scores {tuple(t.shape)}"
        ok = q.dim() == 2 and c.dim() == 3 and c.shape[0] == q.shape[0] and c.shape[2] == q.shape[1]
        ok = ok and c.shape[1] >= 1 and (t is None or tuple(t.shape) == tuple(c.shape[:2]))
        if ids is not None and tuple(ids.shape) != tuple(c.shape[:2]):
            ok = False
            shapes += f", candidate_ids {tuple(ids.shape)}"
        if not ok:
            raise ShapeError(
                f"inbatch_weighted needs {self.query_key!r} (B, D), {self.candidates_key!r} "
                f"(B, C, D) and teacher {self.teacher_key!r} (B, C); got {shapes}",
                hint="use a dual_encoder student (outputs: [scores, query, candidates, "
                "candidate_ids]) and a teacher that scores the same candidates",
            )
        return q, c, t, ids

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        device = student[self.query_key].device.type
        with torch.autocast(device, enabled=False):
            q, c, t, ids = self._tensors(student, teacher)
            b, n = c.shape[:2]
            if self.similarity == "cosine":
                q, c = F.normalize(q, dim=-1), F.normalize(c, dim=-1)
            every, offset = gather_rows(c.reshape(b * n, -1))
            logits = q @ every.T / self.temperature  # (b, B·C)
            rows = torch.arange(b, device=q.device)
            positive = offset + rows * n  # column of each query's own candidate 0
            weights = torch.ones_like(logits)
            if t is not None:
                own = positive[:, None] + torch.arange(1, n, device=q.device)
                margin = (t[:, :1] - t[:, 1:]) / self.weight_temperature
                weights[rows[:, None], own] = torch.sigmoid(margin)
            if ids is not None:  # the positive's text again, anywhere in the batch
                all_ids, _ = gather_rows(ids.reshape(-1))
                weights[all_ids[None, :] == ids[:, :1]] = 0.0
            weights[rows, positive] = 1.0
            # log Σ_j w_ij e^{z_ij}, with log 0 = -inf for masked columns
            denominator = torch.logsumexp(logits + weights.log(), dim=1)
            return (denominator - logits[rows, positive]).mean()
