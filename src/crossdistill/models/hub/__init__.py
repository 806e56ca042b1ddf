"""Real pretrained teachers that install from a package; importing this registers them.

Each module imports its heavy dependencies (sentence-transformers, ...) only when its factory is
called, so registering them costs nothing.
"""

from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)
