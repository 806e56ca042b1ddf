"""The momentum teacher: an exponential moving average (EMA) of the student's weights.

Mean teacher (Tarvainen & Valpola 2017, arXiv:1703.01780) and ALBEF's momentum distillation
(Li et al. 2021, arXiv:2107.07651): the teacher is never trained by the optimizer; after every
optimizer step it moves towards the student,

    teacher <- d * teacher + (1 - d) * student,

with ``d = decay``, or during the warm-up ``d = min(decay, (1 + t) / (10 + t))`` at update ``t``
(counted from 0), as TensorFlow's ``ExponentialMovingAverage`` with ``num_updates`` does: with
0.999 from the first step, the teacher would stay near the random initialisation for thousands
of steps.

Buffers are averaged too: a floating-point buffer (BatchNorm's running mean and variance) with
the same ``d`` as the weights, since the teacher runs in eval mode and never gathers statistics
of its own; an integer buffer (``num_batches_tracked``) is copied. The update count is a buffer,
so the teacher's ``state_dict()`` is everything a checkpoint needs to resume it exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from crossdistill.core.taps import Tap
from crossdistill.core.wrappers import ModelWrapper, Teacher
from crossdistill.errors import ConfigError

WARMUP_OFFSET = 10.0  # (1 + t) / (10 + t): 0.1 at the first update, 0.5 at the ninth, -> 1


class EMATeacher(Teacher):
    """A frozen copy of the student's model (with its pipeline and outputs, and ``taps`` of its
    own) whose weights follow the student's as an EMA.

    ``update(student_model)`` after each optimizer step (the Trainer calls it; not after a step
    the optimizer skipped). The copy is on the student's device once the Distiller is moved;
    under DDP update it from the underlying module (``ddp.module``), whose weights every rank
    shares. Its ``state_dict()`` (weights, buffers, ``updates``) is what a checkpoint keeps.
    """

    # the student's own model reads the student's input, whatever view the data gives a teacher
    view = "student"

    def __init__(
        self,
        student: ModelWrapper,
        decay: float = 0.999,
        warmup: bool = True,
        taps: Iterable[Tap] = (),
    ) -> None:
        if not 0 < decay < 1:
            raise ConfigError(
                f"a momentum teacher's decay must lie strictly between 0 and 1, got {decay}",
                hint="0 copies the student and 1 never moves; 0.99 to 0.9999 are usual",
            )
        super().__init__(
            _copy_without_taps(student),
            outputs=student.outputs,
            taps=taps,
            pipeline=copy.deepcopy(student.pipeline),
        )
        self.decay = float(decay)
        self.warmup = bool(warmup)
        # updates made so far: a buffer, so that it is checkpointed and moves with the device
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))
        self.requires_grad_(False)

    def decay_at(self, t: int | torch.Tensor) -> torch.Tensor:
        """The decay update ``t`` (from 0) uses, as a 0-dim tensor on ``t``'s device (float64:
        ``1 - d`` keeps its digits; float32 on MPS, which has no float64)."""
        device = t.device if isinstance(t, torch.Tensor) else None
        wide = torch.float32 if device is not None and device.type == "mps" else torch.float64
        t = torch.as_tensor(t, dtype=wide)
        if not self.warmup:
            return torch.full_like(t, self.decay)
        return torch.clamp((1 + t) / (WARMUP_OFFSET + t), max=self.decay)

    @torch.no_grad()
    def restart(self, student_model: nn.Module) -> None:
        """Become an exact copy of ``student_model`` again, with no updates made (the Trainer
        calls it before the first step: the student's lazy modules exist only by then)."""
        for mine, theirs in _pairs(self.model, student_model):
            mine.copy_(theirs)
        self.updates.zero_()

    @torch.no_grad()
    def update(self, student_model: nn.Module, skipped: torch.Tensor | None = None) -> None:
        """Move the average towards ``student_model`` by one update.

        ``skipped``: a 0-dim bool tensor, true when the optimizer skipped this step (an fp16
        overflow): the average then stays as it is and the count does not move. It is a tensor
        so that nothing waits for the GPU to say which."""
        d = self.decay_at(self.updates)
        if skipped is not None:
            d = torch.where(skipped.to(d.device), torch.ones_like(d), d)
        for mine, theirs in _pairs(self.model, student_model):
            if mine.is_floating_point():
                # lerp: mine + (1 - d) * (theirs - mine), in the weights' own dtype
                mine.lerp_(theirs.to(mine.dtype), (1 - d).to(mine.device, mine.dtype))
            elif skipped is None:
                mine.copy_(theirs)
            else:
                mine.copy_(torch.where(skipped.to(mine.device), mine, theirs))
        moved = 1 if skipped is None else (~skipped).to(self.updates.device, torch.int64)
        self.updates.add_(moved)


def _copy_without_taps(student: ModelWrapper) -> nn.Module:
    """A deep copy of the student's model without the student's tap hooks: a copied hook would
    still record into the student's recorder (a copy keeps the hook functions themselves)."""
    model = copy.deepcopy(student.model)
    recorder = student._recorder
    ids = {handle.id for handle in recorder._handles} if recorder is not None else set()
    if ids:
        for module in model.modules():
            for hooks in (module._forward_hooks, module._forward_pre_hooks):
                for i in ids & hooks.keys():
                    del hooks[i]
    return model


def _pairs(mine: nn.Module, theirs: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The teacher's and the student's parameters and buffers, matched by name."""
    ours = dict(mine.named_parameters()) | dict(mine.named_buffers())
    other = dict(theirs.named_parameters()) | dict(theirs.named_buffers())
    if ours.keys() != other.keys():
        missing = sorted(ours.keys() ^ other.keys())[:5]
        raise ConfigError(
            f"the momentum teacher and the student's model differ in {missing}",
            hint="update the teacher from the model it was copied from (under DDP: its .module)",
        )
    return [(ours[k], other[k].detach()) for k in ours]
