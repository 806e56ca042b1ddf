"""Contrastive and affinity losses: the student's embedding is pulled to its own teacher embedding
and away from the others'.

One registered loss per module; importing this package registers them all."""

from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)
