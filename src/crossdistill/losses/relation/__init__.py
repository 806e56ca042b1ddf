"""Relation losses: the student reproduces the teacher's sample-to-sample structure, so feature
widths may differ.

One registered loss per module; importing this package registers them all."""

from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)
