"""The text tasks, one registered class per file; importing this package registers them all."""

from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)
