"""Logit losses: one registered loss per module."""

from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)
