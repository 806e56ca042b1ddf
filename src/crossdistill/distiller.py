"""The Distiller: teacher(s) + student + weighted losses → ``(student_knowledge, {term: loss})``.

It is the one place where the two sides meet. It knows nothing of optimizers or data loading
(the Trainer's job) nor where the teacher's Knowledge comes from: an online teacher, or a
``batch["knowledge"]`` that a knowledge store put there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crossdistill.errors import ConfigError
from crossdistill.knowledge import Knowledge
from crossdistill.losses.registry import Loss
from crossdistill.models.wrappers import Student, Teacher


@dataclass
class Term:
    """One weighted loss term, logged under ``name``."""

    name: str
    loss: Loss
    weight: float = 1.0


class Distiller(nn.Module):
    """Runs both sides on a batch and returns the student's Knowledge and the weighted terms.

    The total loss is ``sum(terms.values())``. The teacher runs only when some loss reads it.
    ``adapters`` maps a student Knowledge key to a trainable module whose output is added as
    ``adapted/<key>`` (e.g. a projector into the teacher's feature space); adapters are trained
    and checkpointed with the student but are not part of the exported student.
    """

    def __init__(
        self,
        student: Student,
        terms: Sequence[Term],
        teacher: Teacher | None = None,
        adapters: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if not terms:
            raise ConfigError("a Distiller needs at least one loss")
        self.student = student
        self.teacher = teacher
        self.adapters = nn.ModuleDict(dict(adapters or {}))
        self.losses = nn.ModuleDict({t.name: t.loss for t in terms})
        self.weights = {t.name: float(t.weight) for t in terms}
        self.needs = {t.name: t.loss.needs() for t in terms}
        self.uses_teacher = any(n.teacher for n in self.needs.values())
        if self.uses_teacher and teacher is None:
            users = [name for name, n in self.needs.items() if n.teacher]
            raise ConfigError(
                f"losses {users} read the teacher, but no teacher is configured",
                hint="add a `teacher:` section to the recipe, or remove those losses",
            )

    def trainable(self) -> nn.ModuleDict:
        """What the optimizer updates and a checkpoint saves: never the teacher."""
        return nn.ModuleDict(
            {"student": self.student, "adapters": self.adapters, "losses": self.losses}
        )

    def teacher_knowledge(self, batch: Mapping[str, Any]) -> Knowledge:
        if "knowledge" in batch:  # precomputed (knowledge store)
            return batch["knowledge"]
        if not self.uses_teacher:
            return Knowledge(source="teacher")
        assert self.teacher is not None
        return self.teacher(batch["views"]["teacher"])

    def forward(self, batch: Mapping[str, Any]) -> tuple[Knowledge, dict[str, torch.Tensor]]:
        student = self.student(batch["views"]["student"])
        for key, adapter in self.adapters.items():
            student[f"adapted/{key}"] = adapter(student[key])
        teacher = self.teacher_knowledge(batch)
        target = batch.get("target")
        terms: dict[str, torch.Tensor] = {}
        for name, loss in self.losses.items():
            needs = self.needs[name]
            student.require(needs.student, f"loss {name!r}")
            teacher.require(needs.teacher, f"loss {name!r}")
            if needs.target and target is None:
                raise ConfigError(f"loss {name!r} needs targets, but the data has none")
            terms[name] = self.weights[name] * loss(student, teacher, target)
        return student, terms

    @torch.no_grad()
    def check(self, batch: Mapping[str, Any]) -> None:
        """One forward on a small batch, before training, so that a loss that needs what a
        model does not produce, or tensors of the wrong shape, fail before any output is
        written. Runs in eval mode: no BatchNorm statistics or RNG state change."""
        was_training = self.training
        self.eval()
        try:
            self(batch)
        finally:
            self.train(was_training)

    def extra_parameters(self) -> int:
        """Trainable parameters beyond the student (adapters, loss modules)."""
        return sum(p.numel() for m in (self.adapters, self.losses) for p in m.parameters())
