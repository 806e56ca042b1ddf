"""Callbacks: user code and loggers that the Trainer calls while it trains.

A callback subclasses :class:`Callback` and overrides the hooks it needs. A recipe names them
in ``train.loggers`` (the built-in loggers: ``jsonl``, ``tensorboard``, ``mlflow``,
``wandb``) and ``train.callbacks`` (``{name: package.module:MyCallback, params: {...}}``);
Python code passes instances: ``distill(..., callbacks=[MyCallback()])``. Both are built by
the one plug-in rule (a registered name or an import path, ``params`` validated against the
constructor). Importing this package registers every built-in (one file each).
"""

from crossdistill.registry import import_submodules
from crossdistill.train.callbacks._base import (
    CALLBACKS,
    Callback,
    CallbackList,
    CheckpointedLogger,
    build_callbacks,
    check_callbacks,
    run_folder,
)

import_submodules(__name__, __path__)  # each built-in registers itself

__all__ = [
    "CALLBACKS",
    "Callback",
    "CallbackList",
    "CheckpointedLogger",
    "build_callbacks",
    "check_callbacks",
    "run_folder",
]
