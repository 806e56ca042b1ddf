"""Continual distillation: a sequence of tasks trained one after another, each task's model the
frozen teacher of the next (Learning without Forgetting), with an optional replay buffer, and the
metrics of the sequence (accuracy matrix, average accuracy, forgetting, backward transfer, churn).
See docs/continual.md."""

from crossdistill.continual.loop import run_continual
from crossdistill.continual.metrics import (
    average_accuracy,
    backward_transfer,
    churn,
    forgetting,
    summary,
)

__all__ = [
    "average_accuracy",
    "backward_transfer",
    "churn",
    "forgetting",
    "run_continual",
    "summary",
]
