"""The loss registry and the :class:`Loss` base class.

A loss is registered by name in its own file::

    @LOSSES.register("kd")
    class KDLoss(Loss):
        needs_student = ("logits",)
        needs_teacher = ("logits",)

        def __init__(self, temperature: float = 4.0) -> None: ...
        def forward(self, student, teacher, target): ...

Its hyper-parameters are its ``__init__`` keyword arguments; their type hints are validated when a
recipe builds the loss, so ``temperature: "hot"`` is refused with the YAML path in the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from crossdistill.core.knowledge import Knowledge
from crossdistill.registry import Registry


@dataclass(frozen=True)
class Needs:
    """What a loss reads: Knowledge keys from each side, and whether it needs the target."""

    student: tuple[str, ...] = ()
    teacher: tuple[str, ...] = ()
    target: bool = False


class Loss(nn.Module):
    """Base class of every loss: ``forward(student, teacher, target) -> scalar``.

    Subclasses set ``needs_student`` / ``needs_teacher`` / ``needs_target`` (or override
    :meth:`needs` when the keys depend on hyper-parameters, e.g. a tap name).
    """

    needs_student: ClassVar[tuple[str, ...]] = ()
    needs_teacher: ClassVar[tuple[str, ...]] = ()
    needs_target: ClassVar[bool] = False
    # hyper-parameter -> its range or choices for `crossdistill tune` (a config.SearchDim's
    # fields: low/high/log/step/integer/choices), around the settings its paper reports
    search_space: ClassVar[dict[str, dict]] = {}

    def needs(self) -> Needs:
        return Needs(self.needs_student, self.needs_teacher, self.needs_target)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError


LOSSES: Registry[type[Loss]] = Registry("loss", base=Loss, returns=Loss)


def build_loss(
    name: str | type[Loss], params: Mapping[str, Any] | None = None, where: str = "loss"
) -> Loss:
    """The loss ``name`` (registered, or ``package.module:Class``) with validated ``params``."""
    return LOSSES.build(name, params, where)
