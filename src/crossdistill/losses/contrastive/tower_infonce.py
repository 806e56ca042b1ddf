"""CLIP's contrastive loss between two of the student's own outputs (no teacher)."""

from __future__ import annotations

import torch

from crossdistill.core.knowledge import Knowledge
from crossdistill.losses.contrastive.infonce import InfoNCELoss
from crossdistill.losses.pair import _get, shape_str
from crossdistill.losses.registry import LOSSES, Needs


@LOSSES.register("tower_infonce")
class TowerInfoNCELoss(InfoNCELoss):
    r"""CLIP (Radford et al., ICML 2021, arXiv:2103.00020): symmetric InfoNCE between two
    towers of the *student*, ``a`` (e.g. the speech tower's ``embedding``) and ``b`` (the text
    tower's ``text_embedding``), each row's positive the other tower's row of the same example.

    It is :class:`~crossdistill.losses.contrastive.infonce.InfoNCELoss` with both tensors read
    from the student, so it trains a two-tower model from pairs alone — the no-teacher baseline
    of cross-modal distillation — and gradients reach both towers. Defaults follow CLIP: both
    directions, a learned temperature starting at 0.07.
    """

    def __init__(
        self,
        a: str = "embedding",
        b: str = "text_embedding",
        temperature: float = 0.07,
        symmetric: bool = True,
        learnable_temperature: bool = True,
        min_temperature: float = 0.01,
    ) -> None:
        super().__init__(a, b, temperature, symmetric, learnable_temperature, min_temperature)

    def needs(self) -> Needs:
        return Needs((self.student_key, self.teacher_key), ())

    def where(self, s: torch.Tensor, t: torch.Tensor) -> str:
        return (
            f"student {self.student_key!r} {shape_str(s)} and {self.teacher_key!r} {shape_str(t)}"
        )

    def pair(self, student: Knowledge, teacher: Knowledge) -> tuple[torch.Tensor, torch.Tensor]:
        """Both tensors come from the student; the teacher's Knowledge is not read."""
        return super().pair(
            student, Knowledge({self.teacher_key: _get(student, self.teacher_key, self.who)})
        )
