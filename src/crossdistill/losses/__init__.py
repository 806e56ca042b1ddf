"""Losses, registered by name. Importing this package registers every built-in loss."""

from crossdistill.losses import logit  # noqa: F401  (registers the logit losses)
from crossdistill.losses.registry import LOSSES, Loss, Needs, build_loss

__all__ = ["LOSSES", "Loss", "Needs", "build_loss"]
