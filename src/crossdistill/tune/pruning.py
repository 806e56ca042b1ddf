"""The callback that connects a trial's training to its optuna trial: each validation
evaluation is reported as an intermediate value, and the trial stops when the pruner says so.

A trial's recipe names it in ``train.callbacks`` by import path, with the trial's number;
the live optuna trial is found in :data:`LIVE`, which the study fills for the trial it is
training in this process. Rerun outside a study (``crossdistill run trials/trial-3/...``) the
callback only checks that the metric exists.
"""

from __future__ import annotations

import math
from typing import Any

from crossdistill.errors import ConfigError
from crossdistill.train.callbacks import Callback

# the optuna trials being trained in this process, by trial number (one at a time)
LIVE: dict[int, Any] = {}
PATH = "crossdistill.tune.pruning:ReportToStudy"


class Pruned(BaseException):
    """The pruner stopped the trial after epoch ``epoch``.

    A BaseException, not optuna's ``TrialPruned`` (an Exception): the Trainer turns a
    callback's Exception into a logged failure, and a pruned trial has not failed. Training
    unwinds as for Ctrl-C (the epoch's checkpoint is kept); the study tells optuna.
    """

    def __init__(self, epoch: int, value: float) -> None:
        super().__init__(f"pruned after epoch {epoch} ({value:.4g})")
        self.epoch, self.value = epoch, value


class ReportToStudy(Callback):
    """Report ``metric`` of each validation evaluation to trial ``trial`` (step: the epoch);
    raise :class:`Pruned` when its pruner says so. The first evaluation without ``metric``
    stops training with a ConfigError naming the metrics it has."""

    def __init__(self, metric: str, trial: int | None = None) -> None:
        self.metric, self.trial = metric, trial

    def on_eval(self, trainer: Any, epoch: int, metrics: dict[str, Any]) -> None:
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            have = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
            raise ConfigError(
                f"tune.metric {self.metric!r} is not a number of the validation evaluation, "
                f"which has: {', '.join(have) or 'no numbers'}",
                hint=f"set tune.metric to one of them, e.g. --set tune.metric={have[0]}"
                if have
                else "choose a student whose evaluation reports a metric",
            )
        live = LIVE.get(self.trial) if self.trial is not None else None
        if live is None or not math.isfinite(value):
            return
        live.report(float(value), step=epoch)
        if live.should_prune():
            raise Pruned(epoch, float(value))
