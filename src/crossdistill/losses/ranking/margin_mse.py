"""Margin-MSE: the student reproduces the teacher's score margins between a positive and each
negative candidate."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import SCORES, Knowledge
from crossdistill.errors import ShapeError
from crossdistill.losses.gather import gather_rows
from crossdistill.losses.pair import PairLoss
from crossdistill.losses.registry import LOSSES

Mode = Literal["auto", "scores", "embeddings"]
Similarity = Literal["cosine", "dot"]


class ScoresOrEmbeddingsLoss(PairLoss):
    """A ranking loss that reads either candidate scores or embeddings (both ``(B, ·)``).

    Scores and embeddings are both rank 2, so the rank cannot tell them apart; the *mode* is
    ``scores`` when either key is the Knowledge key ``scores`` (``mode: auto``, default) and
    ``embeddings`` otherwise, or set explicitly with ``mode`` for other key names.

    - scores: ``(B, C)`` on both sides, the same ``C ≥ 2`` candidates per query, column 0 the
      positive (the layout of sentence-transformers' ``(query, positive, negative_1, ...)``
      labels);
    - embeddings: ``(B, D_s)`` and ``(B, D_t)`` (widths may differ); candidates are the other
      rows of the batch (of every rank under DDP, gathered with their gradients), scored by
      ``similarity`` (cosine or dot product) on each side.
    """

    ranks = (2,)

    def __init__(
        self,
        student: str,
        teacher: str,
        mode: Mode,
        similarity: Similarity,
    ) -> None:
        super().__init__(student, teacher)
        if mode == "auto":
            mode = "scores" if SCORES in (student, teacher) else "embeddings"
        self.mode = mode
        self.similarity = similarity

    def device_type(self, student: Knowledge) -> str:
        """Where the student tensor lives (for autocast); a missing key fails later, by name."""
        return student[self.student_key].device.type if self.student_key in student else "cpu"

    def scores(self, student: Knowledge, teacher: Knowledge) -> tuple[torch.Tensor, torch.Tensor]:
        """Score mode's ``(B, C)`` pair, checked: same shape, at least two candidates."""
        s, t = self.pair(student, teacher)
        if s.shape != t.shape or s.shape[1] < 2:
            raise ShapeError(
                f"{self.who} in score mode needs (batch, candidates) scores of the same shape "
                f"on both sides, with at least 2 candidates (column 0 the positive); got "
                f"{self.where(s, t)}",
                hint="score the same candidates with both models, or set `mode: embeddings` "
                "if these keys hold embeddings",
            )
        return s, t

    def in_batch(
        self, student: Knowledge, teacher: Knowledge
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Embedding mode: this rank's rows against every row, ``(b, B)`` on each side, and
        where this rank's rows start among all rows."""
        s, t = self.pair(student, teacher)
        if self.similarity == "cosine":
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        (all_s, offset), (all_t, _) = gather_rows(s), gather_rows(t)
        return s @ all_s.T, t @ all_t.T, offset


@LOSSES.register("margin_mse")
class MarginMSELoss(ScoresOrEmbeddingsLoss):
    r"""Margin-MSE (Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with
    Cross-Architecture Knowledge Distillation", arXiv:2010.02666): the student learns the
    teacher's *margin* between a positive and a negative, not the scores themselves, so the
    two models may score on different scales up to a per-query shift.

    Score mode (``(B, C)`` scores, column 0 the positive, see :class:`ScoresOrEmbeddingsLoss`)::

        L = mean_{i, k ≥ 1} ((s_i0 − s_ik) − (t_i0 − t_ik))²

    — sentence-transformers' ``MarginMSELoss`` with ``[pos, neg_1, ...]`` labels (a test checks
    the two agree on the same scores).

    Embedding mode (``(B, D)`` embeddings, widths may differ): triples are mined in the batch by
    the teacher. With ``S`` and ``T`` the student's and teacher's in-batch similarity matrices
    (``similarity``: cosine, default, or dot product), each anchor ``i`` takes as positive its
    teacher nearest neighbour ``p(i) = argmax_{j ≠ i} T_ij`` and every other row
    ``k ∉ {i, p(i)}`` as a negative::

        L = mean_{i, k} ((S_ip − S_ik) − (T_ip − T_ik))²      over B (B − 2) terms

    A batch of fewer than three rows has no negative and gives 0. Under DDP the candidates are
    the rows of every rank, so with equal per-rank batches the mean over ranks is the
    single-process loss on the global batch.
    """

    def __init__(
        self,
        student: str = "embedding",
        teacher: str = "embedding",
        mode: Mode = "auto",
        similarity: Similarity = "cosine",
    ) -> None:
        super().__init__(student, teacher, mode, similarity)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        with torch.autocast(self.device_type(student), enabled=False):
            if self.mode == "scores":
                s, t = self.scores(student, teacher)
                return F.mse_loss(s[:, :1] - s[:, 1:], t[:, :1] - t[:, 1:])
            return self._mined(*self.in_batch(student, teacher))

    @staticmethod
    def _mined(sim_s: torch.Tensor, sim_t: torch.Tensor, offset: int) -> torch.Tensor:
        b, n = sim_s.shape
        if n < 3:
            return (sim_s * 0).sum()  # no negative; keeps the graph for backward
        rows = torch.arange(b, device=sim_s.device)
        own = rows + offset
        masked = sim_t.detach().clone()
        masked[rows, own] = -torch.inf
        positive = masked.argmax(dim=1)  # ties: the first, deterministic
        negative = torch.ones_like(sim_s, dtype=torch.bool)
        negative[rows, own] = False
        negative[rows, positive] = False
        margin_s = sim_s[rows, positive].unsqueeze(1) - sim_s
        margin_t = sim_t[rows, positive].unsqueeze(1) - sim_t
        return (margin_s - margin_t)[negative].pow(2).mean()
