"""Embedding losses: a student embedding against its own teacher embedding, vector by vector
(through an adapter when widths differ).

One registered loss per module; importing this package registers them all."""

from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)
