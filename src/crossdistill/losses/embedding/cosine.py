"""Cosine embedding loss: the student embedding points where the teacher's does."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import Knowledge
from crossdistill.losses.pair import PairLoss
from crossdistill.losses.registry import LOSSES


@LOSSES.register("cosine")
class CosineLoss(PairLoss):
    r"""Cosine embedding loss, as in DistilBERT (Sanh et al., 2019, arXiv:1910.01108), which
    adds it to KD to align the directions of the student's and teacher's hidden states.

    ``L = mean_i (1 − cos(s_i, t_i))`` with ``cos(a, b) = a·b / (‖a‖ ‖b‖)`` over the last
    dimension: for ``(B, D)`` embeddings the mean over the batch; for ``(B, N, D)`` token states
    the mean over every (sample, token). This is ``torch.nn.CosineEmbeddingLoss`` with target
    ``+1`` (a test checks the two agree). A zero vector has cosine 0 (PyTorch's ``eps``).

    The loss ignores lengths — scaling either side by a positive factor per row leaves it
    unchanged — so it suits teachers whose embeddings are used through cosine similarity (e.g.
    sentence-transformers models). Both tensors must have the same shape; with a narrower
    student (a 256-d student of a 384-d teacher) give the loss ``adapter: auto`` (or
    ``linear``) in the recipe so a learned projection maps the student into the teacher's space.
    """

    ranks = (2, 3)
    same_shape = True

    def __init__(self, student: str = "embedding", teacher: str = "embedding") -> None:
        super().__init__(student, teacher)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        device = s.device.type
        with torch.autocast(device, enabled=False):  # norms of fp16 vectors overflow
            return (1 - F.cosine_similarity(s, t, dim=-1)).mean()
