"""Losses, registered by name, one per file in a family package (``logit``, ``feature``,
``relation``, ``attention``, ``contrastive``, ``embedding``, ``ranking``). Importing this package
registers every built-in loss."""

from crossdistill.losses.pair import PairLoss
from crossdistill.losses.registry import LOSSES, Loss, Needs, build_loss
from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)  # each family registers its losses

__all__ = ["LOSSES", "Loss", "Needs", "PairLoss", "build_loss"]
