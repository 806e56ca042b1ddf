"""Losses, registered by name. Importing this package registers every built-in loss."""

from crossdistill.losses import (  # noqa: F401  (each family registers its losses)
    attention,
    contrastive,
    embedding,
    feature,
    logit,
    ranking,
    relation,
)
from crossdistill.losses.pair import PairLoss
from crossdistill.losses.registry import LOSSES, Loss, Needs, build_loss

__all__ = ["LOSSES", "Loss", "Needs", "PairLoss", "build_loss"]
