"""Feature losses: a student feature against the teacher's, element by element (through an adapter
when shapes differ).

One registered loss per module; importing this package registers them all."""

from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)
