"""The ``tensorboard`` logger: TensorBoard event files written while training."""

from __future__ import annotations

from typing import Any

from crossdistill.errors import require
from crossdistill.train.callbacks._base import (
    CALLBACKS,
    Callback,
    History,
    Trainer,
    run_folder,
    scalars,
)

# A name ending the event files training writes: `crossdistill report` leaves such a folder as it
# is instead of writing its own copy from metrics.jsonl.
LIVE_SUFFIX = ".live"
INSTALL = "pip install tensorboard (or: pip install 'crossdistill[logging]')"


@CALLBACKS.register("tensorboard")
class TensorBoardLogger(Callback):
    """TensorBoard scalars written while training, into the run's ``tensorboard/`` folder
    (or ``log_dir``): ``train/<term>`` and ``train/lr`` per logged step, ``epoch/<value>`` per
    epoch, ``eval/<metric>`` per evaluation, all against the optimizer step. A resumed run
    purges what the first attempt wrote after its checkpoint, so no step appears twice.
    View with ``tensorboard --logdir runs/NAME/tensorboard``."""

    requires = ("torch.utils.tensorboard", INSTALL)

    def __init__(self, log_dir: str | None = None, flush_secs: float = 10.0) -> None:
        # checked now, so that a recipe naming it fails before training
        require("torch.utils.tensorboard", "the tensorboard logger", INSTALL)
        self.log_dir, self.flush_secs = log_dir, flush_secs
        self.writer: Any = None

    def on_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter  # optional package

        folder = run_folder(trainer, "tensorboard_dir", self.log_dir, "tensorboard")
        folder.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(
            log_dir=str(folder),
            # events after the checkpoint a resumed run continues from were done again
            purge_step=trainer.step + 1 if trainer.step else None,
            flush_secs=int(self.flush_secs),
            filename_suffix=LIVE_SUFFIX,
        )

    def _scalars(self, prefix: str, record: dict[str, Any], step: int) -> None:
        for key, value in scalars(record):
            self.writer.add_scalar(f"{prefix}/{key}", value, step, walltime=record.get("time"))

    def on_step(self, trainer: Trainer, step: int, record: dict[str, Any]) -> None:
        self._scalars("train", record, step)

    def on_epoch(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        self._scalars("epoch", record, trainer.step)
        self.writer.flush()

    def on_eval(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        self._scalars("eval", metrics, trainer.step)
        self.writer.flush()

    def on_end(self, trainer: Trainer, history: History) -> None:
        self.writer.flush()

    def close(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
