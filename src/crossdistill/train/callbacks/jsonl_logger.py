"""The ``jsonl`` logger: ``metrics.jsonl``, which every run writes anyway."""

from __future__ import annotations

from crossdistill.train.callbacks._base import CALLBACKS, Callback


@CALLBACKS.register("jsonl")
class JsonlLogger(Callback):
    """The run's ``metrics.jsonl`` (every logged step, epoch, evaluation, resume): the Trainer
    writes it for every run, so naming this logger only says so; it writes nothing more."""
