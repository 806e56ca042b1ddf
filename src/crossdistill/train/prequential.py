"""Prequential ("test, then train") accuracy of the models being trained (Dawid 1984).

With ``train.prequential: true`` every training batch is first predicted by each trained model
(the student and the peers), in evaluation mode and without gradients, and only then learnt
from. Over a stream read once in its own order (``data.order: given``, ``train.epochs: 1``)
this is the online-learning score: each example is predicted by a model that has not yet seen
it. Scoring draws no random numbers and changes no weight, so the trained models are the same
with and without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from crossdistill._util.device import autocast
from crossdistill.core.knowledge import LOGITS
from crossdistill.errors import ConfigError

PREFIX = "prequential_accuracy"


class Prequential:
    """Right and scored predictions per model, summed on the device (no host sync per step),
    carried through mid-epoch checkpoints by :meth:`state` / :meth:`load`."""

    def __init__(self, device: torch.device, amp: torch.dtype | None) -> None:
        self.device, self.amp = device, amp
        self.counts: dict[str, torch.Tensor] = {}  # side -> [right, scored] (float64)

    def score(self, models: Mapping[str, nn.Module], batch: Mapping[str, Any]) -> None:
        """Add each model's predictions on ``batch`` (already on the device) to its counts."""
        target = batch.get("target")
        if target is None:
            raise ConfigError(
                "train.prequential scores each training batch against its labels, and this "
                "data has none",
                hint="set `train.prequential: false`, or train on a labelled source",
            )
        views = batch["views"]
        for side, model in models.items():
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad(), autocast(self.device, self.amp):
                    out = model(views.get(side, views["student"]))
            finally:
                model.train(was_training)
            logits = out.get(LOGITS) if isinstance(out, Mapping) else None
            if logits is None:
                raise ConfigError(
                    f"train.prequential scores the {side}'s `logits`, and it emits "
                    f"{sorted(out) if isinstance(out, Mapping) else type(out).__name__}",
                    hint="set `train.prequential: false`, or name the model's classifier output "
                    "`logits` in its `outputs:`",
                )
            right, scored = _right_and_scored(logits.detach().float(), target)
            counts = self.counts.get(side)
            if counts is None:
                counts = self.counts[side] = torch.zeros(2, dtype=torch.float64, device=self.device)
            counts[0] += right
            counts[1] += scored

    def state(
        self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, list[float]]:
        """The counts so far, for a checkpoint (``reduce`` sums them over ranks)."""
        return {
            side: [float(v) for v in (reduce(counts.clone()) if reduce else counts)]
            for side, counts in self.counts.items()
        }

    def load(self, state: Mapping[str, list[float]]) -> None:
        """Continue from a checkpoint's counts."""
        self.counts = {
            side: torch.tensor(values, dtype=torch.float64, device=self.device)
            for side, values in state.items()
        }

    def epoch_metrics(
        self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, float]:
        """``prequential_accuracy`` (a peer's under ``<peer>/``) over the epoch's batches on
        every rank (``reduce`` sums a tensor over ranks), and a fresh count for the next."""
        out = {}
        for side, counts in self.counts.items():
            total = reduce(counts.clone()) if reduce is not None else counts
            key = PREFIX if side == "student" else f"{side}/{PREFIX}"
            out[key] = float(total[0] / total[1]) if total[1] > 0 else float("nan")
        self.counts = {}
        return out


def _right_and_scored(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | int]:
    """Right predictions and how many were scored: yes/no decisions (a trailing 1, or targets as
    wide as the logits: multi-label) by the sign of the logit, else the arg-max class; integer
    targets below 0 (padding frames) are not scored."""
    if logits.shape[-1] == 1 or target.shape == logits.shape:
        decisions = (logits.reshape(target.shape) > 0).to(target.dtype)
        return (decisions == target).sum(), target.numel()
    if target.shape != logits.shape[:-1]:
        raise ConfigError(
            f"train.prequential: the student's logits {tuple(logits.shape)} do not fit the "
            f"labels {tuple(target.shape)}",
            hint="set `train.prequential: false` for this data",
        )
    scored = target >= 0
    right = (logits.argmax(-1) == target) & scored
    return right.sum(), scored.sum()
