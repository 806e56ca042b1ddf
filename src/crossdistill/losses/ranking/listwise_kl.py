"""Listwise KL: the student's softmax over candidates matches the teacher's."""

from __future__ import annotations

import torch

from crossdistill.core.knowledge import Knowledge
from crossdistill.losses.checks import check_range
from crossdistill.losses.contrastive.affinity import drop_self, row_kl
from crossdistill.losses.ranking.margin_mse import Mode, ScoresOrEmbeddingsLoss, Similarity
from crossdistill.losses.registry import LOSSES


@LOSSES.register("listwise_kl")
class ListwiseKLLoss(ScoresOrEmbeddingsLoss):
    r"""Listwise distillation: the KL divergence from the teacher's softmax over a query's
    candidates to the student's, as in RocketQAv2's dynamic listwise distillation (Ren et al.,
    EMNLP 2021, arXiv:2110.07367) and TAS-B's in-batch teacher signal (Hofstätter et al.,
    SIGIR 2021, arXiv:2104.06967; TAS-B itself uses Margin-MSE, see ``margin_mse``).

    Score mode (``(B, C)`` scores, see :class:`ScoresOrEmbeddingsLoss`)::

        L = τ² · (1/B) Σ_i KL( softmax(t_i· / τ) ‖ softmax(s_i· / τ) )

    — sentence-transformers' ``DistillKLDivLoss`` (``batchmean``, times the temperature
    squared; a test checks the two agree). ``τ²`` keeps gradient magnitudes comparable across
    temperatures (Hinton et al. 2015).

    Embedding mode (``(B, D)`` embeddings, widths may differ): the candidates of row ``i`` are
    the other rows of the batch — the in-batch similarity rows ``S_i·`` / ``T_i·`` (cosine,
    default, or dot product) without the diagonal, which is each row with itself and carries no
    information. With cosine similarity this is the ``affinity`` loss times ``τ²``. A batch of
    one has no candidates and gives 0. Under DDP the candidates are the rows of every rank.

    ``temperature`` defaults to 1, the usual value for scores; cosines lie in ``[−1, 1]``, so in
    embedding mode a lower one (e.g. 0.05) gives distributions that are not near uniform.
    """

    def __init__(
        self,
        student: str = "embedding",
        teacher: str = "embedding",
        temperature: float = 1.0,
        mode: Mode = "auto",
        similarity: Similarity = "cosine",
    ) -> None:
        super().__init__(student, teacher, mode, similarity)
        self.temperature = check_range("listwise_kl", "temperature", temperature, positive=True)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        tau = self.temperature
        with torch.autocast(self.device_type(student), enabled=False):
            if self.mode == "scores":
                s, t = self.scores(student, teacher)
            else:
                s, t, offset = self.in_batch(student, teacher)
                if s.shape[1] < 2:
                    return (s * 0).sum()  # no candidates; keeps the graph for backward
                s, t = drop_self(s, offset), drop_self(t, offset)
            return row_kl(t / tau, s / tau) * tau**2
