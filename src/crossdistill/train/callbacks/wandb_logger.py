"""The ``wandb`` logger: Weights & Biases metrics written while training, offline by default."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml

from crossdistill._util.files import write_atomic
from crossdistill.errors import require
from crossdistill.train.callbacks._base import (
    CALLBACKS,
    CheckpointedLogger,
    Trainer,
    read_json_dict,
    run_folder,
)

INSTALL = "pip install wandb (or: pip install 'crossdistill[logging]')"
RUN_ID_FILE = "crossdistill_run.json"  # in the wandb/ folder: the W&B run a resume continues


@CALLBACKS.register("wandb")
class WandbLogger(CheckpointedLogger):
    """Weights & Biases metrics and the recipe as the run's config, written while training.

    It never reaches the network by itself: the mode is ``offline`` unless ``mode`` or the
    ``WANDB_MODE`` environment variable says otherwise, and the files go to the run folder's
    ``wandb/`` (or ``log_dir``'s); upload them later with ``wandb sync runs/NAME/wandb/
    offline-run-*``. The W&B run is named after the run folder (``run_name``) in ``project``.
    Metrics are ``train/<term>`` per logged step, ``epoch/<value>``, ``eval/<metric>``, against
    the optimizer step. They reach W&B at each checkpoint (and at the end), so a ``--resume``d
    run continues the same W&B run id (kept in the run folder) without logging a step twice.
    """

    requires = ("wandb", INSTALL)

    def __init__(
        self,
        project: str = "crossdistill",
        run_name: str | None = None,
        mode: Literal["offline", "online", "disabled"] | None = None,
        log_dir: str | None = None,
    ) -> None:
        require("wandb", "the wandb logger", INSTALL)  # before training, not at its start
        super().__init__()
        self.project, self.run_name, self.mode, self.log_dir = project, run_name, mode, log_dir
        self.wandb_run: Any = None

    def on_start(self, trainer: Trainer) -> None:
        import wandb  # optional package

        # wandb.init(dir=...) writes into a `wandb/` folder of its own there
        parent = run_folder(trainer, "path", self.log_dir, "wandb")
        folder = parent / "wandb"
        name = self.run_name or getattr(getattr(trainer.run, "path", None), "name", None)
        folder.mkdir(parents=True, exist_ok=True)
        saved = read_json_dict(folder / RUN_ID_FILE)
        resumed = bool(trainer.step and saved.get("run_id"))
        self.wandb_run = wandb.init(
            project=self.project,
            name=name,
            id=str(saved["run_id"]) if resumed else None,
            resume="allow" if resumed else None,
            config=_config(trainer),
            dir=str(parent),
            # an explicit WANDB_MODE (say, online) is the user's choice; else nothing is sent
            mode=self.mode or (None if os.environ.get("WANDB_MODE") else "offline"),
            # a run of its own even when another W&B run is open in this process
            reinit="create_new",
            # our progress bar and logs stay on the terminal, not in W&B's console capture
            settings=wandb.Settings(console="off"),
        )
        write_atomic(
            folder / RUN_ID_FILE,
            json.dumps({"run_id": self.wandb_run.id}),
            what="the W&B run id",
        )

    def _send(self, values: list[tuple[str, float, int, float]]) -> None:
        if self.wandb_run is None:
            return
        rows: dict[int, dict[str, float]] = {}
        for name, value, step, _ in values:
            rows.setdefault(step, {})[name] = value
        # one row per step, in order: W&B drops a step lower than one already logged
        for step in sorted(rows):
            self.wandb_run.log(rows[step], step=step)

    def _end(self, failed: bool) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1 if failed else 0)
        self.wandb_run = None


def _config(trainer: Trainer) -> dict[str, Any]:
    """The run's recipe (its ``config.yaml``) as W&B's config; without a run, ``train:``."""
    config_file = getattr(trainer.run, "config_file", None)
    if config_file is not None and Path(config_file).is_file():
        with contextlib.suppress(OSError, yaml.YAMLError):
            found = yaml.safe_load(Path(config_file).read_text())
            if isinstance(found, dict):
                return found
    return {"train": trainer.spec.model_dump(mode="json")}
