"""Attention losses: the student's attention distributions (and value relations) match the
teacher's.

One registered loss per module; importing this package registers them all."""

from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)
