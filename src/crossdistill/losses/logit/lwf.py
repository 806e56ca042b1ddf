"""Learning without Forgetting: distillation on the classes the old model knows."""

from __future__ import annotations

from typing import ClassVar

import torch

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.losses.checks import HyperParameterError, check_range
from crossdistill.losses.logit._common import logit_pair
from crossdistill.losses.logit.kd import soft_kl
from crossdistill.losses.registry import LOSSES, Loss, Needs


@LOSSES.register("lwf")
class LwFLoss(Loss):
    r"""Learning without Forgetting (Li & Hoiem 2016, arXiv:1606.09282): the new model keeps
    the old model's softened outputs on the new task's data, over the old classes only.

    ``L = T² · (1/B) Σ_i KL(softmax(t_i[C] / T) || softmax(s_i[C] / T))``, where ``C`` are the
    logits of ``classes`` (all of them when unset, which is :class:`~crossdistill.losses.logit.
    kd.KDLoss`). The paper's modified cross-entropy with ``T = 2`` (its eq. 2) equals this KL
    divided by ``T²`` up to the teacher's entropy, a constant.

    With one shared head over every class (class-incremental learning), the old model never
    learned the new classes: its logits for them are noise, so ``classes`` restricts the term to
    the classes of the earlier tasks (the continual loop sets it for each task; see
    docs/continual.md). ``student``/``teacher`` name the two logits' Knowledge keys.
    """

    search_space: ClassVar[dict[str, dict]] = {
        "temperature": {"low": 1.0, "high": 8.0, "log": True}
    }

    def __init__(
        self,
        temperature: float = 2.0,
        classes: list[int] | None = None,
        *,
        student: str = LOGITS,
        teacher: str = LOGITS,
    ) -> None:
        super().__init__()
        self.temperature = check_range("lwf", "temperature", temperature, positive=True)
        if classes is not None and (
            len(classes) < 2 or min(classes) < 0 or len(set(classes)) != len(classes)
        ):
            raise HyperParameterError(
                f"lwf: classes {classes} must list at least two distinct class indices "
                "(a softmax over one class is constant: nothing to distill)",
                hint="list the logits the old model was trained on, e.g. [0, 1, 2, 3]",
            )
        self.classes = None if classes is None else sorted(classes)
        self.student_key, self.teacher_key = student, teacher

    def needs(self) -> Needs:
        return Needs((self.student_key,), (self.teacher_key,))

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = logit_pair(student, teacher, "lwf", self.student_key, self.teacher_key)
        if self.classes is not None:
            if self.classes[-1] >= s.shape[1]:
                raise HyperParameterError(
                    f"lwf: classes {self.classes} reach beyond the {s.shape[1]} logits",
                    hint="list class indices below the number of logits",
                )
            keep = torch.as_tensor(self.classes, device=s.device)
            s, t = s.index_select(1, keep), t.index_select(1, keep)
        return soft_kl(s, t, self.temperature)
